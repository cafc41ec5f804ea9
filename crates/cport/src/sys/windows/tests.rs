use std::net::SocketAddr;
use std::ptr;

use socket2::Domain;
use windows_sys::Win32::Networking::WinSock::{INVALID_SOCKET, SOCKADDR_STORAGE};

use super::net::{from_storage, to_storage};
use super::op::{unsent, OpBox, Operation};
use super::pool::Pool;
use crate::completion::{Handle, OpId};
use crate::sys::{FreeList, Op};

/// `len` bytes of `s` over a storage full of 0xAA, as the kernel leaves
/// one it wrote an address of that length into.
fn written(s: &SOCKADDR_STORAGE, len: i32) -> SOCKADDR_STORAGE {
    let mut d = SOCKADDR_STORAGE {
        ss_family: 0xAAAA,
        __ss_pad1: [0xAA; 6],
        __ss_align: i64::from_ne_bytes([0xAA; 8]),
        __ss_pad2: [0xAA; 112],
    };
    let len = (len as usize).min(std::mem::size_of::<SOCKADDR_STORAGE>());
    // SAFETY:
    // - both are whole SOCKADDR_STORAGEs, plain bytes with no invalid
    //   values, and `len` is at most their size; they do not overlap.
    unsafe {
        ptr::copy_nonoverlapping(
            (s as *const SOCKADDR_STORAGE).cast::<u8>(),
            (&mut d as *mut SOCKADDR_STORAGE).cast::<u8>(),
            len,
        )
    };
    d
}

#[test]
fn sockaddr_bytes_round_trip_for_both_families() {
    // WSASendTo and ConnectEx read what to_storage makes, and WSARecvFrom's
    // sender goes through from_storage: a byte in the wrong place sends
    // to, or reports, the wrong peer.
    for text in ["127.0.0.1:5353", "[::1]:40000", "[fe80::1%7]:9"] {
        let addr: SocketAddr = text.parse().unwrap();
        let (storage, len) = to_storage(addr);
        assert_eq!(len, if addr.is_ipv4() { 16 } else { 28 }, "{text}");
        let buf = written(&storage, len);
        assert_eq!(from_storage(&buf, len), Some(addr), "{text}");
        assert_eq!(from_storage(&buf, len - 1), None, "{text}: truncated");
    }
}

#[test]
fn pool_runs_dry_only_while_buffers_are_in_the_kernel() {
    let mut pool = Pool {
        count: 2,
        in_kernel: 0,
        undelivered: 0,
        free: FreeList::new(2, 64),
    };
    let a = pool.take().expect("first");
    let _b = pool.take().expect("second");
    assert!(pool.take().is_none(), "two in the kernel: dry");
    pool.done();
    let c = pool.take().expect("a receive finished: one is free again");
    assert_eq!(c.capacity(), 64);
    // Given back, a right-sized buffer is reused; a wrong one dropped.
    pool.give(a);
    pool.give(Vec::with_capacity(3));
    assert_eq!(pool.free.len(), 1);
}

#[test]
fn x4_a_packets_overlapped_leads_to_its_operation_and_slab_key() {
    let port = crate::completion::PortId::new(7).unwrap();
    let handle = Handle {
        port,
        index: 1,
        generation: 2,
    };
    let op = Operation::new(
        handle,
        9,
        INVALID_SOCKET,
        "value",
        None,
        Op::Recv(Vec::with_capacity(8)),
        Domain::IPV4,
    );
    let mut b = OpBox::new(op);
    let id = OpId {
        port,
        index: 3,
        generation: 4,
    };
    // SAFETY:
    // - never started: the kernel holds none of it.
    unsafe { b.get_mut() }.id = id;
    // What the kernel hands back is the address it was given.
    let ov = b.overlapped();
    // SAFETY:
    // - `ov` is the OVERLAPPED of the live operation in `b`, never started.
    assert_eq!(unsafe { OpBox::<&str>::id_of(ov) }, id);
    // SAFETY:
    // - never started: the kernel holds none of it.
    let op = unsafe { b.into_inner() };
    assert_eq!(op.handle, handle);
    assert_eq!(op.id, id);
}

#[test]
fn o4_a_send_goes_on_after_the_bytes_the_kernel_took() {
    let op = Op::SendVectored(vec![b"ab".to_vec(), Vec::new(), b"cde".to_vec()]);
    let left = |skip| {
        unsent(&op, skip)
            .iter()
            .map(|w| w.len)
            .collect::<Vec<u32>>()
    };
    assert_eq!(left(0), [2, 3], "empty buffers are left out");
    assert_eq!(left(1), [1, 3]);
    assert_eq!(left(3), [2]);
    assert_eq!(left(5), Vec::<u32>::new());
    let one = Op::Send(b"hello".to_vec());
    let w = unsent(&one, 2);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].len, 3);
}
