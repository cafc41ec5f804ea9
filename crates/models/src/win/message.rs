//! WSAAsyncSelect: socket events arrive as window messages in one thread's
//! message queue, and one message loop handles every socket.
//!
//! The tutorials' calls, and where they are here:
//!
//! - `RegisterClass` and `CreateWindow`: a window class of this server's
//!   own (a name unique in the process, so that servers can run side by
//!   side) and a message-only window (parent `HWND_MESSAGE`: never shown,
//!   no desktop needed), created by the thread that calls [`serve`],
//!   which owns its queue.
//! - `WSAAsyncSelect(listener, hwnd, WM_SOCKET, FD_ACCEPT)`, and for each
//!   accepted socket `WSAAsyncSelect(s, hwnd, WM_SOCKET, FD_READ |
//!   FD_WRITE | FD_CLOSE)` (which replaces the FD_ACCEPT selection it
//!   inherits from the listener). The call makes a socket non-blocking.
//! - `GetMessage`, `TranslateMessage`, `DispatchMessage`: the loop in
//!   [`serve`]. A WM_SOCKET message carries the socket in `wParam` and
//!   `WSAGETSELECTEVENT(lParam)` / `WSAGETSELECTERROR(lParam)` in
//!   `lParam`. For the listener, `accept` until it would block; for a
//!   connection, `recv`/`send` until they would block ([`Echo::pump`]):
//!   Winsock posts FD_READ again after each `recv` that leaves data and
//!   FD_WRITE only after a `send` failed with WSAEWOULDBLOCK, so pumping
//!   until both would block (or are not wanted, under backpressure)
//!   leaves each wanted direction re-enabled by its last call. The error
//!   half of `lParam` is not acted on: the call that follows fails with
//!   the same error and ends the connection (a reset ends only its own).
//!
//! Where it differs from the tutorial: WM_SOCKET is handled by the loop
//! itself, before `DispatchMessage`, not in the window procedure (the
//! class's procedure is `DefWindowProc`). Winsock *posts* its messages, so
//! they pass through `GetMessage` in the same order on the same thread
//! either way; handling them in the loop keeps the connections a local of
//! [`serve`] instead of state a window procedure would reach through a
//! pointer stored in the window or a thread-local, and keeps the echo
//! code out of an `extern "system"` callback, out of which a panic cannot
//! unwind (it would abort the process instead of failing the model).
//!
//! The stop posts a private message, WM_STOP, to the window; the loop
//! ends on it, cancels every socket's selection (`WSAAsyncSelect(s, hwnd,
//! 0, 0)`), closes the connections, destroys the window (which flushes
//! its queued messages) and unregisters the class. A socket is closed
//! only after its selection is cancelled, but messages already queued
//! for it stay queued, and Windows reuses SOCKET values: a message for a
//! socket no longer in the map is dropped, and one for a new socket that
//! reused the value costs a `recv` or `send` that would block (which
//! re-enables the event), nothing more, since only those calls decide.
//! All accepts, reads and writes of every connection run on the one
//! thread: its single-loop cost is what this model shows.
//!
//! FD_ACCEPT is re-armed with another `WSAAsyncSelect(listener, hwnd,
//! WM_SOCKET, FD_ACCEPT)` after each drain of the listener. Windows needs
//! no such call: any `accept`, even one that fails with WSAEWOULDBLOCK,
//! re-enables FD_ACCEPT. Wine 8 re-enables it only on a successful accept
//! (server/sock.c, `accept_socket`), and its server can, it seems, post
//! an FD_ACCEPT for a connection an accept already took (a readiness
//! event it polled before handling that accept): the `accept` that message
//! leads to fails with WSAEWOULDBLOCK, FD_ACCEPT stays "reported", and no
//! later connection is ever announced. Seen under wine as servers whose
//! listener held 129 connections and no message queued (a test's 200
//! clients timed out in about one run in five). Re-selecting resets
//! wine's record; on Windows it costs one call per FD_ACCEPT message, and
//! at most an extra message (whose `accept` would block) when a
//! connection arrives meanwhile.
//!
//! Under wine a message-only window needs no display: wine's user driver
//! falls back to a null driver without an X server, and its
//! `nodrv_CreateWindow` accepts a window whose parent is the message
//! window ("HWND_MESSAGE windows don't need a graphics driver",
//! dlls/win32u/driver.c), so the tests run headless, as on Windows.

use std::collections::HashMap;
use std::io;
use std::iter;
use std::marker::PhantomData;
use std::net::{TcpListener, TcpStream};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use windows_sys::Win32::Foundation::{HMODULE, HWND, LPARAM, POINT, WPARAM};
use windows_sys::Win32::Networking::WinSock::{
    WSAAsyncSelect, FD_ACCEPT, FD_CLOSE, FD_READ, FD_WRITE, SOCKET, SOCKET_ERROR,
};
use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CreateWindowExW, DefWindowProcW, DestroyWindow, DispatchMessageW, GetMessageW, PostMessageW,
    RegisterClassW, TranslateMessage, UnregisterClassW, HWND_MESSAGE, MSG, WM_USER, WNDCLASSW,
};

use crate::win::{socket, wsa_error};
use crate::{accept_ready, keep, lock, Echo, Stats, Stop};

/// The message WSAAsyncSelect posts for a socket event (the tutorial's
/// `#define WM_SOCKET (WM_USER+1)`).
const WM_SOCKET: u32 = WM_USER + 1;

/// The message the stop posts.
const WM_STOP: u32 = WM_USER + 2;

/// Runs the echo server until `stop` is set; see the [crate] docs.
pub fn serve(
    listener: TcpListener,
    stop: Stop,
    stats: Arc<Stats>,
    buffer: usize,
) -> io::Result<()> {
    crate::check_buffer(buffer)?;
    let _me = stats.thread();
    let window = Window::new()?;
    let hwnd = window.hwnd;
    {
        let target = window.target.clone();
        stop.on_stop(move || {
            let hwnd = lock(&target);
            if *hwnd != 0 {
                // SAFETY: PostMessageW takes the window handle and two
                // integers, no pointers. The window exists: `Window`'s
                // drop zeroes `target` under this lock before destroying
                // it, so no post reaches a destroyed (or reused) handle.
                unsafe { PostMessageW(*hwnd, WM_STOP, 0, 0) };
            }
        });
    }
    let ls = socket(&listener);
    async_select(ls, hwnd, FD_ACCEPT)?;
    let mut conns: HashMap<SOCKET, Echo> = HashMap::new();
    let result = loop {
        let msg = match get_message() {
            Ok(Some(msg)) => msg,
            // WM_QUIT: nothing here posts it, but it ends a loop.
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if msg.hwnd == hwnd && msg.message == WM_STOP {
            break Ok(());
        }
        if msg.hwnd != hwnd || msg.message != WM_SOCKET {
            dispatch(&msg);
            continue;
        }
        let s = msg.wParam as SOCKET;
        if s == ls {
            // FD_ACCEPT (WSAGETSELECTEVENT(lParam)).
            let drained = accept_ready(&listener, |stream| match selected(stream, hwnd, buffer) {
                Ok((s, echo)) => {
                    stats.opened();
                    conns.insert(s, echo);
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
            });
            if !drained {
                // An accept error (descriptor exhaustion) after a pause:
                // connections may still be queued, and FD_ACCEPT is posted
                // again only once one arrives, so post it now.
                // SAFETY: as for the stop's post; this thread owns the
                // window, alive until this function's end.
                unsafe { PostMessageW(hwnd, WM_SOCKET, ls as WPARAM, FD_ACCEPT as LPARAM) };
            } else if let Err(e) = async_select(ls, hwnd, FD_ACCEPT) {
                // Re-armed for wine: see the module docs.
                break Err(e);
            }
            continue;
        }
        // A message for a socket already closed is dropped.
        let Some(c) = conns.get_mut(&s) else { continue };
        if !keep(c.pump(&stats), &stats) {
            // No more messages for it, then close it.
            let _ = async_select(s, hwnd, 0);
            conns.remove(&s);
        }
    };
    for (s, echo) in conns.drain() {
        let _ = async_select(s, hwnd, 0);
        drop(echo);
    }
    let _ = async_select(ls, hwnd, 0);
    stats.end_all();
    drop(window);
    result
}

/// The accepted socket, selected for FD_READ, FD_WRITE and FD_CLOSE.
fn selected(stream: TcpStream, hwnd: HWND, buffer: usize) -> io::Result<(SOCKET, Echo)> {
    let echo = Echo::new(stream, buffer)?;
    let s = socket(&echo.stream);
    async_select(s, hwnd, FD_READ | FD_WRITE | FD_CLOSE)?;
    Ok((s, echo))
}

/// `WSAAsyncSelect(s, hwnd, WM_SOCKET, events)`; `events` 0 cancels.
fn async_select(s: SOCKET, hwnd: HWND, events: u32) -> io::Result<()> {
    let msg = if events == 0 { 0 } else { WM_SOCKET };
    // SAFETY: WSAAsyncSelect takes a socket and a window handle by value
    // and no pointers. Every caller passes a socket it holds open and the
    // window of `serve`, which outlives every selection: each is
    // cancelled before the window is destroyed.
    if unsafe { WSAAsyncSelect(s, hwnd, msg, events as i32) } == SOCKET_ERROR {
        return Err(wsa_error());
    }
    Ok(())
}

/// `GetMessageW(&msg, NULL, 0, 0)`: the calling thread's next message,
/// or `None` for WM_QUIT.
fn get_message() -> io::Result<Option<MSG>> {
    let mut msg = MSG {
        hwnd: 0,
        message: 0,
        wParam: 0,
        lParam: 0,
        time: 0,
        pt: POINT { x: 0, y: 0 },
    };
    // SAFETY: `msg` is a local MSG the call fills; the null window takes
    // every message of the calling thread.
    match unsafe { GetMessageW(&mut msg, 0, 0, 0) } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(msg)),
    }
}

/// `TranslateMessage` and `DispatchMessageW`, for any message that is not
/// this server's own.
fn dispatch(msg: &MSG) {
    // SAFETY: `msg` is a message GetMessageW returned, read-only here;
    // the procedure it reaches is a window's of this thread (ours is
    // DefWindowProcW).
    unsafe {
        TranslateMessage(msg);
        DispatchMessageW(msg);
    }
}

/// A registered window class and its message-only window, destroyed and
/// unregistered on drop.
struct Window {
    hwnd: HWND,
    /// The class name, NUL-terminated, for `UnregisterClassW`.
    class: Vec<u16>,
    instance: HMODULE,
    /// The window the stop posts to, 0 once it is being destroyed.
    target: Arc<Mutex<HWND>>,
    /// Not Send: a window is destroyed by the thread that created it.
    _thread: PhantomData<*const ()>,
}

impl Window {
    fn new() -> io::Result<Window> {
        static CLASSES: AtomicUsize = AtomicUsize::new(0);
        let n = CLASSES.fetch_add(1, Ordering::Relaxed);
        let name = format!("cport-models-message-{n}");
        let class: Vec<u16> = name.encode_utf16().chain(iter::once(0)).collect();
        // SAFETY: a null name asks for the executable's own module handle,
        // which is not reference-counted; no pointer is written.
        let instance = unsafe { GetModuleHandleW(ptr::null()) };
        let wc = WNDCLASSW {
            style: 0,
            lpfnWndProc: Some(DefWindowProcW),
            cbClsExtra: 0,
            cbWndExtra: 0,
            hInstance: instance,
            hIcon: 0,
            hCursor: 0,
            hbrBackground: 0,
            lpszMenuName: ptr::null(),
            lpszClassName: class.as_ptr(),
        };
        // SAFETY: `wc` is a complete WNDCLASSW whose class name points to
        // `class`, NUL-terminated and alive for the call (Windows copies
        // it); the procedure is DefWindowProcW itself.
        if unsafe { RegisterClassW(&wc) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the class was registered above with this name and
        // instance; the name doubles as the title; HWND_MESSAGE makes a
        // message-only window; no creation parameter.
        let hwnd = unsafe {
            CreateWindowExW(
                0,
                class.as_ptr(),
                class.as_ptr(),
                0,
                0,
                0,
                0,
                0,
                HWND_MESSAGE,
                0,
                instance,
                ptr::null(),
            )
        };
        if hwnd == 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the class registered above, with no window left.
            unsafe { UnregisterClassW(class.as_ptr(), instance) };
            return Err(e);
        }
        Ok(Window {
            hwnd,
            class,
            instance,
            target: Arc::new(Mutex::new(hwnd)),
            _thread: PhantomData,
        })
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // No post after this: the stop's waker checks under the lock.
        *lock(&self.target) = 0;
        // SAFETY: the window was created by this thread (`Window` is not
        // Send, and only its own thread can destroy a window) and is
        // destroyed once, here; then the class, registered with this name
        // and instance, has no window left. Neither call keeps a pointer.
        unsafe {
            DestroyWindow(self.hwnd);
            UnregisterClassW(self.class.as_ptr(), self.instance);
        }
    }
}
