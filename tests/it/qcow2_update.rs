//! In-place updates of qcow2 images ([`Qcow2Update`]) against `qemu-img check` and
//! `qemu-img compare`: random transactions, a crash at every write and sync, the space freed
//! clusters give back, and the images that are refused.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use proptest::prelude::*;
use qemu_compose::disk::qcow2::{Qcow2Error, Qcow2Update, ReadAt, UpdateStorage, write_data_image};
use qemu_compose::disk::{BlockSink, BlockSource, RawFile, SparseBuffer};
use tempfile::TempDir;

use crate::harness::{all_text, pattern, qemu_img_create_with, run_tool, s, tool_ok};
use crate::qcow2::assert_check_clean;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// One L2 table maps 512 MiB with 64 KiB clusters: writes around here touch two tables.
const L2_SPAN: u64 = 512 * MIB;

fn open_rw(path: &Path) -> File {
    File::options().read(true).write(true).open(path).unwrap()
}

/// The image holds `model`, says `qemu-img compare`.
fn assert_holds(image: &Path, model: &SparseBuffer) {
    assert!(
        holds(image, model),
        "{} differs from the model",
        image.display()
    );
}

/// Whether the image holds `model`, by `qemu-img compare` (exit 0 same, 1 different).
fn holds(image: &Path, model: &SparseBuffer) -> bool {
    let raw = image.with_extension("model.raw");
    let _ = fs::remove_file(&raw);
    let mut out = RawFile::new(File::create(&raw).unwrap(), model.len()).unwrap();
    for (at, bytes) in model.extents() {
        out.write_at(at, bytes).unwrap();
    }
    out.finish().unwrap();
    let o = run_tool(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            s(image),
            s(&raw),
        ],
    );
    match o.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("qemu-img compare: {}", all_text(&o)),
    }
}

/// A 1 GiB image written by our writer, with data on both sides of the first L2 boundary.
fn ours(dir: &Path) -> (PathBuf, SparseBuffer) {
    let path = dir.join("ours.qcow2");
    let mut model = SparseBuffer::new(GIB);
    model.write_at(0, &pattern(1, 200 * KIB as usize)).unwrap();
    model
        .write_at(L2_SPAN - 70_000, &pattern(2, 150_000))
        .unwrap();
    model.write_at(GIB - 5, b"tail!").unwrap();
    write_data_image(&File::create(&path).unwrap(), GIB, &model).unwrap();
    (path, model)
}

/// A 1 GiB image made by `qemu-img create` and filled by `qemu-io`.
fn qemus(dir: &Path) -> (PathBuf, SparseBuffer) {
    qemus_with(dir, "qemu.qcow2", &[])
}

/// Like [`qemus`], with `qemu-img create` options.
fn qemus_with(dir: &Path, name: &str, options: &[&str]) -> (PathBuf, SparseBuffer) {
    let path = dir.join(name);
    qemu_img_create_with(&path, options, Some("1G"));
    tool_ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 0 192k",
            "-c",
            "write -P 0x22 511M 2M",
            "-c",
            "write -z 700M 128k",
            s(&path),
        ],
    );
    let mut model = SparseBuffer::new(GIB);
    model.write_at(0, &[0x11; 192 * KIB as usize]).unwrap();
    model
        .write_at(511 * MIB, &vec![0x22; 2 * MIB as usize])
        .unwrap();
    (path, model)
}

/// One random write: where, how long, and the seed of its bytes.
fn write_strategy() -> impl Strategy<Value = (u64, usize, u64)> {
    let offset = prop_oneof![
        0..4 * MIB,
        L2_SPAN - 300 * KIB..L2_SPAN + 300 * KIB,
        (0..GIB / 65536).prop_map(|c| c * 65536),
        0..GIB - 8 * MIB,
    ];
    let len = prop_oneof![
        1..100_000usize,
        (1..8usize).prop_map(|n| n * 65536),
        (1..5 * MIB as usize),
    ];
    (offset, len, any::<u64>())
}

/// Applies `writes` to the image and the model in one transaction, committed.
fn transaction(path: &Path, model: &mut SparseBuffer, writes: &[(u64, usize, u64)]) {
    let mut update = Qcow2Update::open(open_rw(path)).unwrap();
    for &(at, len, seed) in writes {
        let len = len.min((GIB - at) as usize);
        let bytes = pattern(seed, len);
        update.write_at(at, &bytes).unwrap();
        model.write_at(at, &bytes).unwrap();
        // The transaction reads its own writes.
        let mut back = vec![0; len.min(70_000)];
        update.read_at(at, &mut back).unwrap();
        assert!(back == bytes[..back.len()], "read back at {at}");
    }
    update.commit().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// Transactions one after another on our image and on QEMU's stay clean (no errors, no
    /// leaks) and hold exactly what was written.
    #[test]
    fn random_transactions_stay_clean_and_hold_the_writes(
        txs in prop::collection::vec(prop::collection::vec(write_strategy(), 1..6), 1..4),
    ) {
        let dir = TempDir::new().unwrap();
        // 512-byte clusters: a refcount block covers 128 KiB of the file, so the new blocks
        // and table land in blocks of their own and must count themselves.
        let small = qemus_with(dir.path(), "small.qcow2", &["-o", "cluster_size=512"]);
        let v2 = qemus_with(dir.path(), "v2.qcow2", &["-o", "compat=0.10"]);
        for (path, mut model) in [ours(dir.path()), qemus(dir.path()), small, v2] {
            for writes in &txs {
                transaction(&path, &mut model, writes);
                assert_check_clean(&path);
                assert_holds(&path, &model);
            }
        }
    }
}

/// Shared by a [`Faulty`] storage and the test that looks at what it did.
#[derive(Debug, Default)]
struct Log {
    /// Each operation: its kind and offset (writes), in order.
    ops: Vec<(&'static str, u64)>,
    /// The operation (0-based) that fails, if any.
    fail_at: Option<usize>,
    /// The writes since the last sync: offset, the bytes they replaced, the file's length
    /// before.
    unsynced: Vec<(u64, Vec<u8>, u64)>,
}

/// A file whose `fail_at`-th write, sync, punch or truncation fails: a crash at that point,
/// since the update stops at the first error.
#[derive(Debug)]
struct Faulty {
    file: File,
    log: Rc<RefCell<Log>>,
}

impl Faulty {
    fn op(&self, kind: &'static str, offset: u64) -> io::Result<()> {
        let mut log = self.log.borrow_mut();
        if log.fail_at == Some(log.ops.len()) {
            log.ops.push((kind, offset));
            return Err(io::Error::other(format!("injected failure of {kind}")));
        }
        log.ops.push((kind, offset));
        Ok(())
    }
}

impl ReadAt for Faulty {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

impl UpdateStorage for Faulty {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.op("write", offset)?;
        let len = self.file.metadata()?.len();
        let mut before = vec![0; len.saturating_sub(offset).min(buf.len() as u64) as usize];
        FileExt::read_exact_at(&self.file, &mut before, offset)?;
        self.log.borrow_mut().unsynced.push((offset, before, len));
        UpdateStorage::write_all_at(&mut self.file, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.op("sync", 0)?;
        self.log.borrow_mut().unsynced.clear();
        UpdateStorage::sync_data(&mut self.file)
    }

    fn punch_hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.op("punch", offset)?;
        self.file.punch_hole(offset, len)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.op("truncate", len)?;
        UpdateStorage::set_len(&mut self.file, len)
    }
}

/// Runs a fixed transaction on a copy of `base` whose `k`-th operation fails. With
/// `lose_unsynced`, the crash then also loses every write since the last sync but the header's
/// (the worst order a disk may persist them in). Returns the copy, the operations, and whether
/// the transaction completed.
fn crash_at(
    base: &Path,
    dir: &Path,
    k: usize,
    lose_unsynced: bool,
) -> (PathBuf, Vec<(&'static str, u64)>, bool) {
    let path = dir.join(format!("crash-{k}.qcow2"));
    fs::copy(base, &path).unwrap();
    let log = Rc::new(RefCell::new(Log {
        fail_at: Some(k),
        ..Log::default()
    }));
    let storage = Faulty {
        file: open_rw(&path),
        log: Rc::clone(&log),
    };
    let done = (|| -> Result<(), Qcow2Error> {
        let mut update = Qcow2Update::open_storage(storage)?;
        for &(at, len, seed) in CRASH_WRITES {
            update.write(at, &pattern(seed, len))?;
        }
        update.commit()?;
        Ok(())
    })()
    .is_ok();
    let log = log.borrow();
    if lose_unsynced && !done {
        let file = open_rw(&path);
        for (offset, before, len) in log.unsynced.iter().rev() {
            if *offset != 40 {
                file.write_all_at(before, *offset).unwrap();
                file.set_len(*len).unwrap();
            }
        }
    }
    (path, log.ops.clone(), done)
}

/// Partial and whole clusters in two L2 tables, one over old data.
const CRASH_WRITES: &[(u64, usize, u64)] = &[
    (100, 5000, 7),
    (L2_SPAN - 65536, 3 * 65536, 8),
    (10 * MIB + 1, 70_000, 9),
];

#[test]
fn a_crash_at_any_write_or_sync_leaves_the_old_or_the_new_image() {
    let dir = TempDir::new().unwrap();
    let (base, old) = ours(dir.path());
    let mut new = old.clone();
    for &(at, len, seed) in CRASH_WRITES {
        new.write_at(at, &pattern(seed, len)).unwrap();
    }
    for lose_unsynced in [false, true] {
        let mut between = 0;
        let mut after_switch = 0;
        for k in 0.. {
            let (path, ops, done) = crash_at(&base, dir.path(), k, lose_unsynced);
            assert_check_clean(&path);
            if done {
                assert!(holds(&path, &new), "completed transaction");
                assert!(k > 0);
                break;
            }
            let switch = ops.iter().position(|&op| op == ("write", 40));
            let failed = ops.len() - 1;
            match switch {
                // The header was written: the new image, whatever failed after.
                Some(at) if at < failed => {
                    assert!(
                        holds(&path, &new),
                        "k={k}: the header switched but the contents are old"
                    );
                    after_switch += 1;
                }
                _ => {
                    assert!(
                        holds(&path, &old),
                        "k={k}: neither the old nor the new contents"
                    );
                    if ops[..failed].iter().any(|&(kind, _)| kind == "write") {
                        between += 1;
                    }
                }
            }
            fs::remove_file(&path).unwrap();
        }
        eprintln!(
            "unsynced writes lost: {lose_unsynced}; crash points: {between} between the data \
             and the header, {after_switch} after it"
        );
        assert!(between > 0, "no crash fell between the data and the header");
        assert!(after_switch > 0, "no crash fell after the header switch");
    }
}

#[test]
fn dropping_an_update_leaves_the_old_image() {
    let dir = TempDir::new().unwrap();
    let (path, old) = qemus(dir.path());
    let before = fs::read(&path).unwrap();
    let mut update = Qcow2Update::open(open_rw(&path)).unwrap();
    update.write_at(L2_SPAN - 1000, &[0x77; 300_000]).unwrap();
    drop(update);
    assert_check_clean(&path);
    assert_holds(&path, &old);
    // Not a byte the old image reaches changed: the file only grew.
    let after = fs::read(&path).unwrap();
    assert!(after.len() > before.len());
    assert!(after[..before.len()] == before[..]);
    // A transaction without writes commits as a no-op.
    let update = Qcow2Update::open(open_rw(&path)).unwrap();
    update.commit().unwrap();
    assert!(fs::read(&path).unwrap() == after);
}

#[test]
fn rewriting_the_same_range_reuses_the_freed_clusters() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("space.qcow2");
    let mut model = SparseBuffer::new(64 * MIB);
    model.write_at(0, &pattern(0, 8 * MIB as usize)).unwrap();
    write_data_image(&File::create(&path).unwrap(), 64 * MIB, &model).unwrap();
    let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    let first = allocated(&path);
    for round in 1..=10 {
        let bytes = pattern(round, 8 * MIB as usize);
        let mut update = Qcow2Update::open(open_rw(&path)).unwrap();
        update.write_at(0, &bytes).unwrap();
        update.commit().unwrap();
        model.write_at(0, &bytes).unwrap();
        let (used, len) = (allocated(&path), fs::metadata(&path).unwrap().len());
        eprintln!("round {round}: {used} bytes allocated, file {len} bytes");
        // One copy of the data plus a few metadata clusters; the file never holds more than
        // the old and the new copy.
        assert!(
            used <= 8 * MIB + MIB,
            "round {round}: {used} bytes allocated"
        );
        assert!(
            len <= 16 * MIB + 2 * MIB,
            "round {round}: file of {len} bytes"
        );
    }
    assert!(first <= 8 * MIB + MIB);
    assert_check_clean(&path);
    assert_holds(&path, &model);
}

#[test]
fn images_with_compressed_clusters_take_writes_beside_them() {
    let dir = TempDir::new().unwrap();
    // Text compresses; the random bytes do not, and stay plain clusters.
    let plain = dir.path().join("plain.qcow2");
    let mut model = SparseBuffer::new(GIB);
    let text = b"compressible text ".repeat(10_000);
    model.write_at(0, &text).unwrap();
    model.write_at(MIB, &pattern(4, 100_000)).unwrap();
    write_data_image(&File::create(&plain).unwrap(), GIB, &model).unwrap();
    let packed = dir.path().join("packed.qcow2");
    tool_ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&plain), s(&packed)],
    );
    let mut update = Qcow2Update::open(open_rw(&packed)).unwrap();
    let err = update.write_at(10, b"x").unwrap_err();
    assert!(err.to_string().contains("compressed"), "{err}");
    let err = update.read_at(0, &mut [0; 10]).unwrap_err();
    assert!(err.to_string().contains("compressed"), "{err}");
    // Far from the data, and inside the plain cluster 16 (cluster 17, half zeros, compresses).
    for (at, len) in [(300 * MIB + 7, 300_000), (MIB + 5000, 50_000)] {
        let bytes = pattern(at, len);
        update.write_at(at, &bytes).unwrap();
        model.write_at(at, &bytes).unwrap();
    }
    update.commit().unwrap();
    assert_check_clean(&packed);
    assert_holds(&packed, &model);
}

#[test]
fn preallocated_clusters_are_replaced_and_freed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("prealloc.qcow2");
    qemu_img_create_with(&path, &["-o", "preallocation=metadata"], Some("64M"));
    tool_ok("qemu-io", &["-c", "write -P 0x33 1M 100k", s(&path)]);
    let mut model = SparseBuffer::new(64 * MIB);
    model.write_at(MIB, &[0x33; 100 * KIB as usize]).unwrap();
    for writes in [
        &[(5000, 70_000, 1), (MIB + 4096, 200_000, 2)][..],
        &[(60 * MIB, 5, 3)],
    ] {
        let mut update = Qcow2Update::open(open_rw(&path)).unwrap();
        for &(at, len, seed) in writes {
            let bytes = pattern(seed, len);
            update.write_at(at, &bytes).unwrap();
            model.write_at(at, &bytes).unwrap();
        }
        update.commit().unwrap();
        assert_check_clean(&path);
        assert_holds(&path, &model);
    }
}

fn refusal(path: &Path) -> String {
    match Qcow2Update::open(open_rw(path)) {
        Ok(_) => panic!("{} was opened for update", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn backing_files_snapshots_and_the_dirty_bit_are_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let (base, _) = qemus(d);

    let overlay = d.join("overlay.qcow2");
    tool_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&overlay),
        ],
    );
    let e = refusal(&overlay);
    assert!(e.contains("backing file"), "{e}");

    let snap = d.join("snap.qcow2");
    fs::copy(&base, &snap).unwrap();
    tool_ok("qemu-img", &["snapshot", "-c", "s1", s(&snap)]);
    let e = refusal(&snap);
    assert!(e.contains("1 internal snapshots"), "{e}");

    // Bit 0 of the incompatible features (the last byte of the big-endian field at 72).
    let dirty = d.join("dirty.qcow2");
    fs::copy(&base, &dirty).unwrap();
    open_rw(&dirty).write_all_at(&[1], 79).unwrap();
    let e = refusal(&dirty);
    assert!(
        e.contains("dirty") && e.contains("qemu-img check -r all"),
        "{e}"
    );

    let corrupt = d.join("corrupt.qcow2");
    fs::copy(&base, &corrupt).unwrap();
    open_rw(&corrupt).write_all_at(&[2], 79).unwrap();
    let e = refusal(&corrupt);
    assert!(
        e.contains("corrupt") && e.contains("qemu-img check -r all"),
        "{e}"
    );

    let narrow = d.join("refcount8.qcow2");
    tool_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=8",
            s(&narrow),
            "1M",
        ],
    );
    let e = refusal(&narrow);
    assert!(e.contains("8 bits"), "{e}");
}
