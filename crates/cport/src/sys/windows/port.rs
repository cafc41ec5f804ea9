//! The kernel completion port: one owned handle, one system call per
//! method. What a packet means is decided in `mod.rs`; this file only moves
//! packets in and out of the kernel object.

use std::io;
use std::ptr;
use std::time::Duration;

use windows_sys::Win32::Foundation::{CloseHandle, FALSE, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Networking::WinSock::SOCKET;
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus,
    OVERLAPPED_ENTRY,
};

use super::net;

/// Packets taken per GetQueuedCompletionStatusEx.
pub(super) const BATCH: usize = 64;

/// Room for one batch of dequeued packets.
pub(super) type Packets = [OVERLAPPED_ENTRY; BATCH];

/// An empty batch, for [`Iocp::dequeue`] to fill.
pub(super) fn packets() -> Packets {
    [OVERLAPPED_ENTRY {
        lpCompletionKey: 0,
        lpOverlapped: ptr::null_mut(),
        Internal: 0,
        dwNumberOfBytesTransferred: 0,
    }; BATCH]
}

/// An I/O completion port, closed when this value is dropped.
///
/// The driver's `Drop` drains or leaks every operation first; the port is
/// then closed by this type's own `Drop`, after the driver's, because it is
/// a field of the driver.
#[derive(Debug)]
pub(super) struct Iocp(HANDLE);

impl Iocp {
    /// CreateIoCompletionPort with no file: a new port. The concurrency
    /// value is the kernel's default; the user-space queue counts running
    /// threads itself (see the module essay).
    pub(super) fn new() -> io::Result<Iocp> {
        // SAFETY:
        // - INVALID_HANDLE_VALUE with no existing port asks for a new port;
        //   no pointer is passed.
        let port = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, 0, 0, 0) };
        if port == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Iocp(port))
    }

    /// Associates `socket` with the port: the packets of its overlapped
    /// operations come here, carrying `key`.
    pub(super) fn associate(&self, socket: SOCKET, key: usize) -> io::Result<()> {
        // SAFETY:
        // - `socket` is an open socket the caller owns (a port's `Source`)
        //   and `self.0` is this open port; no pointer is passed.
        let r = unsafe { CreateIoCompletionPort(net::as_handle(socket), self.0, key, 0) };
        if r == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One GetQueuedCompletionStatusEx, waiting at most `timeout` (`None`:
    /// forever): the packets that came, none on a timeout or when the port
    /// is being torn down.
    pub(super) fn dequeue<'a>(
        &self,
        out: &'a mut Packets,
        timeout: Option<Duration>,
    ) -> &'a [OVERLAPPED_ENTRY] {
        let mut n = 0u32;
        // SAFETY:
        // - `out` has room for BATCH entries and `n` receives the count;
        //   both outlive the call, which is not alertable and takes no
        //   OVERLAPPED of its own;
        // - `self.0` is this open port.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.0,
                out.as_mut_ptr(),
                BATCH as u32,
                &mut n,
                millis(timeout),
                FALSE,
            )
        };
        if ok == FALSE {
            n = 0;
        }
        &out[..(n as usize).min(BATCH)]
    }

    /// PostQueuedCompletionStatus: a packet with `key`, no bytes and no
    /// OVERLAPPED.
    pub(super) fn post(&self, key: usize) -> io::Result<()> {
        // SAFETY:
        // - `self.0` is this open port; the packet carries no OVERLAPPED.
        let ok = unsafe { PostQueuedCompletionStatus(self.0, 0, key, ptr::null()) };
        if ok == FALSE {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Iocp {
    fn drop(&mut self) {
        // SAFETY:
        // - `self.0` is the port `new` made, closed once, here.
        unsafe { CloseHandle(self.0) };
    }
}

/// A wait in milliseconds for GetQueuedCompletionStatusEx. Rounded up: a
/// sub-millisecond timeout must not become a zero-wait poll repeated in a
/// busy loop. `u32::MAX` is INFINITE, so a finite wait stops below it.
fn millis(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => u32::MAX,
        Some(d) => {
            let ms = d.as_nanos().saturating_add(999_999) / 1_000_000;
            ms.min(u128::from(u32::MAX - 1)) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::millis;
    use std::time::Duration;

    #[test]
    fn waits_round_up_to_whole_milliseconds_and_stay_finite() {
        assert_eq!(millis(None), u32::MAX);
        assert_eq!(millis(Some(Duration::ZERO)), 0);
        assert_eq!(millis(Some(Duration::from_nanos(1))), 1);
        assert_eq!(millis(Some(Duration::from_micros(1))), 1);
        assert_eq!(millis(Some(Duration::from_micros(1500))), 2);
        assert_eq!(millis(Some(Duration::MAX)), u32::MAX - 1);
    }
}
