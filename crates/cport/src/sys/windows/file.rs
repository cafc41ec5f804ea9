//! Positional file operations, done at issue.
//!
//! `std::fs::File` opens handles for synchronous I/O, which cannot be
//! overlapped, so `read_at`/`write_at` run ReadFile/WriteFile inside the
//! issuing call, with the offset in an OVERLAPPED on the stack, and
//! complete at once (as on epoll). A handle the user opened overlapped
//! still works: the call waits for its I/O before returning.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::windows::io::AsRawHandle;
use std::ptr;
use std::slice;

use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_HANDLE_EOF, ERROR_IO_PENDING, FALSE, HANDLE, TRUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    ReadFile, SetFilePointerEx, WriteFile, FILE_BEGIN, FILE_CURRENT,
};
use windows_sys::Win32::System::IO::{GetOverlappedResult, OVERLAPPED};

use super::op::overlapped;
use crate::sys::{advance, Op};

/// Runs a positional operation on `file`; the bytes it moved.
///
/// ReadFile and WriteFile on a synchronous handle move its position even
/// with an offset in the OVERLAPPED; the position is put back, so that it
/// never moves as far as the user can see (O8). Callers hold the port's
/// state lock, which keeps two operations of the port from interleaving
/// between the save and the restore.
pub(super) fn run(file: &File, op: &mut Op) -> io::Result<usize> {
    let h = file.as_raw_handle() as HANDLE;
    let mut pos = 0i64;
    // SAFETY:
    // - `h` is the open handle of `file`, borrowed for the call; moving by
    //   0 from the current position only writes it into `pos`, a live local.
    if unsafe { SetFilePointerEx(h, 0, &mut pos, FILE_CURRENT) } == FALSE {
        return Err(io::Error::last_os_error());
    }
    let r = moving(h, op);
    // SAFETY:
    // - as above; puts the position back where it was, with no output.
    unsafe { SetFilePointerEx(h, pos, ptr::null_mut(), FILE_BEGIN) };
    r
}

fn moving(h: HANDLE, op: &mut Op) -> io::Result<usize> {
    let offset = op.offset().unwrap_or(0);
    match op {
        Op::ReadAt(b, _) => read_into(h, b, offset),
        Op::ReadVectoredAt(bs, _) => {
            let mut total = 0;
            for b in bs.iter_mut() {
                let room = (b.capacity() - b.len()).min(u32::MAX as usize);
                if room == 0 {
                    continue;
                }
                let n = read_into(h, b, offset + total as u64)?;
                total += n;
                if n < room {
                    break;
                }
            }
            Ok(total)
        }
        Op::WriteAt(b, _) => write_all(h, b, offset),
        Op::WriteVectoredAt(bs, _) => {
            let mut total = 0;
            for b in bs.iter() {
                total += write_all(h, b, offset + total as u64)?;
            }
            Ok(total)
        }
        _ => unreachable!("only positional operations reach file::run"),
    }
}

/// One ReadFile into the spare capacity of `b` at `offset`.
fn read_into(h: HANDLE, b: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    let n = read(h, b.spare_capacity_mut(), offset)?;
    // SAFETY:
    // - ReadFile wrote `n` bytes into the spare capacity of `b`, from its
    //   start, and nothing has written to it since.
    unsafe { advance(slice::from_mut(b), n) };
    Ok(n)
}

/// WriteFile until all of `b` went, at `offset` on.
fn write_all(h: HANDLE, b: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < b.len() {
        let n = write(h, &b[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write_at: the file took no bytes",
            ));
        }
        done += n;
    }
    Ok(done)
}

/// One ReadFile at `offset`; 0 at or past the end of the file.
fn read(h: HANDLE, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
    let mut ov = overlapped(offset);
    let mut n = 0u32;
    let len = buf.len().min(u32::MAX as usize) as u32;
    // SAFETY:
    // - `buf` is writable memory of at least `len` bytes, borrowed for the
    //   call, which `ended` makes last until the I/O is finished; `ov` and
    //   `n` are live locals on this frame.
    let ok = unsafe { ReadFile(h, buf.as_mut_ptr().cast::<u8>(), len, &mut n, &mut ov) };
    ended(h, ok, n, &ov)
}

/// One WriteFile at `offset`.
fn write(h: HANDLE, buf: &[u8], offset: u64) -> io::Result<usize> {
    let mut ov = overlapped(offset);
    let mut n = 0u32;
    let len = buf.len().min(u32::MAX as usize) as u32;
    // SAFETY:
    // - `buf` holds at least `len` initialised bytes, borrowed for the
    //   call, which `ended` makes last until the I/O is finished; `ov` and
    //   `n` are live locals on this frame.
    let ok = unsafe { WriteFile(h, buf.as_ptr(), len, &mut n, &mut ov) };
    ended(h, ok, n, &ov)
}

/// The outcome of a ReadFile or WriteFile that returned `ok` with `n`
/// bytes. On a handle the user opened overlapped the I/O may still be
/// under way: it is waited for here, so that `ov` and the buffer outlive it.
fn ended(h: HANDLE, ok: i32, mut n: u32, ov: &OVERLAPPED) -> io::Result<usize> {
    if ok != FALSE {
        return Ok(n as usize);
    }
    // SAFETY:
    // - reads this thread's last error; no arguments.
    match unsafe { GetLastError() } {
        ERROR_HANDLE_EOF => Ok(0),
        ERROR_IO_PENDING => {
            // SAFETY:
            // - `ov` is the OVERLAPPED of the I/O just started on `h`;
            //   waiting makes the call return only once it is finished.
            if unsafe { GetOverlappedResult(h, ov, &mut n, TRUE) } != FALSE {
                return Ok(n as usize);
            }
            // SAFETY:
            // - reads this thread's last error; no pointers.
            match unsafe { GetLastError() } {
                ERROR_HANDLE_EOF => Ok(0),
                e => Err(io::Error::from_raw_os_error(e as i32)),
            }
        }
        e => Err(io::Error::from_raw_os_error(e as i32)),
    }
}
