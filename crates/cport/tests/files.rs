//! SEMANTICS O8: file reads and writes at explicit offsets, which never
//! move the file position, and the end-of-file outcome.
//!
//! Each test keeps a `try_clone` of the file made before association:
//! clones share the open file description, so its `stream_position()` is
//! the associated file's position too.

mod common;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::PathBuf;

use common::{assert_empty, next, pattern};
use cport::{CompletionPort, Handle, OpKind, Payload};

/// An unlinked temporary file: created, opened, removed from the
/// directory at once, so nothing is left behind even if the test fails.
fn temp_file(backend: &str, name: &str, content: &[u8]) -> File {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "cport-files-{}-{backend}-{name}",
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(content).unwrap();
    f.rewind().unwrap();
    f
}

/// Associates `f` and returns a clone that shows its position.
fn associate(port: &CompletionPort<u64>, f: File, key: u64) -> (Handle, File) {
    let watch = f.try_clone().unwrap();
    assert_eq!(position(&watch), 0);
    (port.associate(f, key).unwrap(), watch)
}

/// The file position of the open file description `f` shares.
fn position(f: &File) -> u64 {
    let mut f = f;
    f.stream_position().unwrap()
}

#[track_caller]
fn buf_of(p: Payload) -> Vec<u8> {
    match p {
        Payload::Buf(b) => b,
        p => panic!("expected Payload::Buf, got {p:?}"),
    }
}

#[track_caller]
fn bufs_of(p: Payload) -> Vec<Vec<u8>> {
    match p {
        Payload::Bufs(b) => b,
        p => panic!("expected Payload::Bufs, got {p:?}"),
    }
}

const KIB4: usize = 4096;

backends! {
    /// Four 4 KiB reads of a 16 KiB file, issued together at offsets
    /// 12288, 0, 8192, 4096: each completion has its own offset's bytes.
    fn o8_read_at_offsets_reads_those_bytes(backend: Backend) {
        let port = common::port::<u64>(backend, 4);
        let content = pattern(4 * KIB4);
        let f = temp_file(backend.name(), "read", &content);
        let (h, watch) = associate(&port, f, 8);
        let mut ptrs = HashMap::new();
        for off in [3, 0, 2, 1].map(|i| (i * KIB4) as u64) {
            let buf = Vec::with_capacity(KIB4);
            ptrs.insert(off, buf.as_ptr());
            port.read_at(h, buf, off, off).unwrap();
        }
        for _ in 0..4 {
            let c = next(&port);
            assert_eq!((c.kind, c.key), (OpKind::ReadAt, 8));
            let off = c.value;
            assert_eq!(c.result.unwrap(), KIB4);
            let b = buf_of(c.payload);
            assert_eq!(Some(&b.as_ptr()), ptrs.get(&off), "the buffer of the read at {off}");
            assert!(b == content[off as usize..off as usize + KIB4], "the bytes at offset {off}");
        }
        assert_empty(&port);
        assert_eq!(position(&watch), 0, "reads at offsets never move the position");
    }

    /// At end of file a read completes with 0 bytes, past it too; one that
    /// straddles it gets the bytes up to it.
    fn o8_read_at_or_past_eof_completes_with_zero_bytes(backend: Backend) {
        let port = common::port::<u64>(backend, 4);
        let content = pattern(4 * KIB4);
        let f = temp_file(backend.name(), "eof", &content);
        let (h, watch) = associate(&port, f, 1);
        let len = content.len() as u64;
        for (off, want) in [(len, 0), (len + 1, 0), (1 << 40, 0), (len - 100, 100)] {
            port.read_at(h, Vec::with_capacity(KIB4), off, off).unwrap();
            let c = next(&port);
            assert_eq!(c.value, off);
            assert_eq!(c.result.unwrap(), want, "a read at {off} of a {len}-byte file");
            assert_eq!(buf_of(c.payload), content[(len - want as u64) as usize..]);
        }
        assert_empty(&port);
        assert_eq!(position(&watch), 0);
    }

    /// Writes at offsets land there (the gap reads as zeros), whatever
    /// order they are issued in, and the position stays at 0.
    fn o8_write_at_offsets_then_read_back(backend: Backend) {
        let port = common::port::<u64>(backend, 4);
        let f = temp_file(backend.name(), "write", b"");
        let (h, watch) = associate(&port, f, 2);
        let writes: [(u64, Vec<u8>); 3] = [
            (10_000, vec![b'c'; 3000]),
            (0, vec![b'a'; 100]),
            (5000, pattern(2000)),
        ];
        for (off, data) in &writes {
            port.write_at(h, data.clone(), *off, *off).unwrap();
        }
        for _ in 0..writes.len() {
            let c = next(&port);
            assert_eq!(c.kind, OpKind::WriteAt);
            let (_, data) = writes.iter().find(|(o, _)| *o == c.value).unwrap();
            assert_eq!(c.result.unwrap(), data.len());
            assert_eq!(&buf_of(c.payload), data, "the written buffer comes back");
        }
        let mut want = vec![0u8; 13_000];
        for (off, data) in &writes {
            want[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        let mut disk = vec![0; want.len()];
        common::read_exact_at(&watch, &mut disk, 0).unwrap();
        assert!(disk == want, "each write landed at its offset");
        assert_eq!(watch.metadata().unwrap().len(), 13_000);

        port.read_at(h, Vec::with_capacity(20_000), 0, 99).unwrap();
        let c = next(&port);
        assert_eq!(c.result.unwrap(), want.len());
        assert!(buf_of(c.payload) == want, "read back through the port");
        assert_eq!(position(&watch), 0, "writes at offsets never move the position");
        assert_empty(&port);
    }

    /// Vectored forms: a gather write of three buffers at an offset, then a
    /// scatter read into three buffers filled in order.
    fn o8_vectored_write_and_read_at_an_offset(backend: Backend) {
        let port = common::port::<u64>(backend, 4);
        let f = temp_file(backend.name(), "vectored", &[b'.'; 64]);
        let (h, watch) = associate(&port, f, 3);
        let parts = vec![b"alpha".to_vec(), b"-".to_vec(), b"omega!".to_vec()];
        port.write_vectored_at(h, parts.clone(), 20, 1).unwrap();
        let c = next(&port);
        assert_eq!((c.kind, c.result.unwrap()), (OpKind::WriteAt, 12));
        assert_eq!(bufs_of(c.payload), parts);

        let mut head = Vec::with_capacity(4);
        head.extend_from_slice(b"#");
        let bufs = vec![head, Vec::with_capacity(4), Vec::with_capacity(100)];
        port.read_vectored_at(h, bufs, 18, 2).unwrap();
        let c = next(&port);
        assert_eq!(c.kind, OpKind::ReadAt);
        assert_eq!(c.result.unwrap(), 64 - 18);
        let got = bufs_of(c.payload);
        assert_eq!(got[0], b"#..a", "the first buffer's room (3) fills first");
        assert_eq!(got[1], b"lpha");
        assert_eq!(got[2], [&b"-omega!"[..], &[b'.'; 64 - 32][..]].concat());
        assert_eq!(position(&watch), 0);
        assert_empty(&port);
    }
}
