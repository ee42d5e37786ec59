//! The native ext4 formatter against the reference tools: e2fsck, dumpe2fs, debugfs, mkfs.ext4
//! (e2fsprogs 1.47) and a real kernel mount. A missing tool fails the test.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use proptest::prelude::*;
use qemu_compose::disk::ext4::{self, Ext4Error, FormatOptions, FormatSummary};
use qemu_compose::disk::{RawFile, SparseBuffer};

use crate::harness::{Mounted, all_text, pattern, run_tool, text, tool};

const K: u64 = 1024;
const M: u64 = K * K;
const G: u64 = K * M;
const T: u64 = K * G;
/// Bytes of one block group.
const GROUP: u64 = 128 * M;

const UUID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const HASH_SEED: &str = "11111111-2222-3333-4444-555555555555";
const TIME: u32 = 1_700_000_000;

fn parse_uuid(s: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(s).unwrap().as_bytes()
}

fn options(label: &str) -> FormatOptions {
    FormatOptions {
        label: label.into(),
        uuid: parse_uuid(UUID),
        hash_seed: parse_uuid(HASH_SEED),
        timestamp: TIME,
        root_uid: 0,
        root_gid: 0,
    }
}

/// A directory for big sparse images: tmpfs, because ext4 (our /tmp) caps files below 16 TiB.
fn big_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("a writable /dev/shm (tmpfs) for sparse 16 TiB images")
}

fn format_file(path: &Path, size: u64, opts: &FormatOptions) -> FormatSummary {
    let file = File::create(path).unwrap();
    let mut raw = RawFile::new(file, size).unwrap();
    let summary = ext4::format(&mut raw, opts).unwrap();
    raw.finish().unwrap();
    summary
}

/// `e2fsck -fn` must exit 0 (nothing to fix) on the image.
fn assert_fsck_clean(path: &Path) {
    let o = run_tool("e2fsck", &["-fn", path.to_str().unwrap()]);
    assert!(
        o.status.code() == Some(0),
        "e2fsck -fn {} exited {:?}:\n{}",
        path.display(),
        o.status.code(),
        all_text(&o)
    );
}

/// `dumpe2fs -h` as key -> value.
fn dumpe2fs(path: &Path) -> BTreeMap<String, String> {
    let o = run_tool("dumpe2fs", &["-h", path.to_str().unwrap()]);
    assert!(o.status.success(), "dumpe2fs failed:\n{}", all_text(&o));
    text(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const FEATURES: &str = "has_journal ext_attr dir_index filetype extent 64bit flex_bg \
                        sparse_super large_file huge_file dir_nlink extra_isize metadata_csum";

/// Keys of `dumpe2fs -h` that must equal mkfs.ext4's for the same size, UUID, label, hash seed
/// and time. (Free blocks and overhead match too: our metadata takes exactly as many blocks.)
const SAME_AS_MKFS: &[&str] = &[
    "Filesystem volume name",
    "Filesystem UUID",
    "Filesystem magic number",
    "Filesystem revision #",
    "Filesystem features",
    "Filesystem flags",
    "Default mount options",
    "Filesystem state",
    "Errors behavior",
    "Filesystem OS type",
    "Inode count",
    "Block count",
    "Reserved block count",
    "Overhead clusters",
    "Free blocks",
    "Free inodes",
    "First block",
    "Block size",
    "Fragment size",
    "Group descriptor size",
    "Blocks per group",
    "Fragments per group",
    "Inodes per group",
    "Inode blocks per group",
    "Flex block group size",
    "Filesystem created",
    "Last write time",
    "Last checked",
    "Maximum mount count",
    "Reserved blocks uid",
    "Reserved blocks gid",
    "First inode",
    "Inode size",
    "Required extra isize",
    "Desired extra isize",
    "Journal inode",
    "Default directory hash",
    "Directory Hash Seed",
    "Journal backup",
    "Checksum type",
    "Total journal size",
    "Total journal blocks",
    "Journal sequence",
    "Journal start",
];

/// Formats `size` bytes, checks it with e2fsck and dumpe2fs, and compares dumpe2fs's view with
/// mkfs.ext4's filesystem of the same size.
fn check_size(dir: &Path, size: u64) {
    let ours = dir.join(format!("ours-{size}.img"));
    let label = "vol-check";
    let t0 = Instant::now();
    let summary = format_file(&ours, size, &options(label));
    let t1 = Instant::now();
    assert_fsck_clean(&ours);
    let t2 = Instant::now();
    let d = dumpe2fs(&ours);
    assert_eq!(d["Filesystem features"], FEATURES);
    assert_eq!(d["Filesystem volume name"], label);
    assert_eq!(d["Filesystem UUID"], UUID);
    assert_eq!(d["Filesystem state"], "clean");
    assert_eq!(d["Block count"], summary.blocks.to_string());
    assert_eq!(d["Inode count"], summary.inodes.to_string());
    assert_eq!(
        d["Total journal blocks"],
        summary.journal_blocks.to_string()
    );
    assert_eq!(d["Journal features"], "journal_64bit journal_checksum_v3");
    assert_eq!(d["Journal checksum type"], "crc32c");
    fs::remove_file(&ours).unwrap();

    let theirs = dir.join(format!("mkfs-{size}.img"));
    File::create(&theirs).unwrap().set_len(size).unwrap();
    let o = tool("mkfs.ext4")
        .args([
            "-F",
            "-q",
            "-b",
            "4096",
            "-O",
            "^resize_inode",
            "-L",
            label,
            "-U",
            UUID,
            "-E",
            &format!("hash_seed={HASH_SEED}"),
            theirs.to_str().unwrap(),
        ])
        .env("E2FSPROGS_FAKE_TIME", TIME.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "mkfs.ext4 failed:\n{}", all_text(&o));
    let m = dumpe2fs(&theirs);
    fs::remove_file(&theirs).unwrap();
    eprintln!(
        "{size} bytes: format {:?}, e2fsck {:?}, dumpe2fs + mkfs.ext4 + dumpe2fs {:?}",
        t1 - t0,
        t2 - t1,
        t2.elapsed()
    );
    for key in SAME_AS_MKFS {
        assert!(m.contains_key(*key), "dumpe2fs -h printed no {key:?}");
        assert_eq!(
            d.get(*key),
            m.get(*key),
            "size {size}: dumpe2fs -h {key:?} differs from mkfs.ext4's"
        );
    }
}

#[test]
fn sizes_across_classes_are_clean_and_match_mkfs() {
    let dir = tempfile::tempdir().unwrap();
    for size in [
        ext4::MIN_SIZE,                  // the minimum: 2048 blocks, 4 MiB journal
        ext4::MIN_SIZE + 3 * 4096 + 123, // just above it, not a whole number of blocks
        100 * M,                         // small class, one group
        511 * M,                         // small class, four groups
        3 * GROUP + 4096,                // one block past a group boundary: groups shrink
        20 * GROUP + 4096,               // the same in the default class: the block is dropped
        5 * GROUP + 3000 * 4096,         // partial last group that is kept
        G,                               // default class
        17 * GROUP + 12345 * 4096,       // second flex group partly filled
        10 * G,                          // 64 MiB journal
        100 * G,                         // 512 MiB journal, journal spans groups
    ] {
        check_size(dir.path(), size);
    }
}

#[test]
fn large_sizes_are_clean_and_match_mkfs() {
    let dir = big_tempdir();
    for size in [T, 5 * T, 16 * T] {
        check_size(dir.path(), size);
    }
}

#[test]
fn sizes_outside_the_range_are_refused() {
    let mut small = SparseBuffer::new(ext4::MIN_SIZE - 1);
    assert!(matches!(
        ext4::format(&mut small, &options("x")),
        Err(Ext4Error::TooSmall { .. })
    ));
    let mut big = SparseBuffer::new(ext4::MAX_SIZE + 4096);
    let err = ext4::format(&mut big, &options("x")).unwrap_err();
    assert!(err.to_string().contains("64 TiB"), "{err}");
    let mut ok = SparseBuffer::new(ext4::MIN_SIZE);
    let err = ext4::format(&mut ok, &options("seventeen-bytes!!")).unwrap_err();
    assert!(matches!(err, Ext4Error::LabelTooLong { .. }), "{err}");
    assert_eq!(ok.stored_bytes(), 0, "nothing is written on error");
}

#[test]
fn output_is_deterministic_and_small() {
    let mut a = SparseBuffer::new(10 * G);
    let mut b = SparseBuffer::new(10 * G);
    ext4::format(&mut a, &options("same")).unwrap();
    ext4::format(&mut b, &options("same")).unwrap();
    assert!(a == b, "two formats with the same options differ");
    // 10 GiB: superblock + 2 descriptor blocks in 4 copies, 6 block bitmaps, 1 inode bitmap,
    // 1 inode table block, 5 directory blocks, the journal superblock.
    assert!(
        a.stored_bytes() <= 40 * 4096,
        "{} bytes stored",
        a.stored_bytes()
    );
    let mut c = SparseBuffer::new(10 * G);
    ext4::format(&mut c, &FormatOptions::new("same")).unwrap();
    assert!(a != c, "random UUIDs must give different filesystems");
}

#[test]
fn read_superblock_reports_what_format_made() {
    let mut buf = SparseBuffer::new(G);
    let summary = ext4::format(&mut buf, &options("inspect-me")).unwrap();
    let mut sb = vec![0u8; 1024];
    buf.read_at(1024, &mut sb);
    let info = ext4::read_superblock(&sb).unwrap();
    assert_eq!(info.label, "inspect-me");
    assert_eq!(info.uuid, parse_uuid(UUID));
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.blocks, summary.blocks);
    assert_eq!(info.free_blocks, summary.free_blocks);
    assert_eq!(u64::from(info.inodes), summary.inodes);
    assert_eq!(info.features.join(" "), FEATURES);
    assert_eq!(info.state, "clean");
    assert!(info.checksum_valid);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sizes_are_clean_and_match_mkfs(size in ext4::MIN_SIZE..300 * G) {
        let dir = tempfile::tempdir().unwrap();
        check_size(dir.path(), size);
    }
}

#[test]
fn kernel_mounts_writes_and_fsck_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    let mut opts = options("mounted");
    opts.root_uid = 1234;
    opts.root_gid = 2345;
    // 20 GiB: ten flex groups, so the kernel spreads the top-level directories into groups
    // that start out INODE_UNINIT and BLOCK_UNINIT and must initialise them from our
    // descriptors.
    format_file(&image, 20 * G, &opts);

    let listing = run_tool("debugfs", &["-R", "ls -l /", image.to_str().unwrap()]);
    let listing = all_text(&listing);
    let owner = |name: &str| -> Vec<String> {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from debugfs ls -l:\n{listing}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    // Columns: inode, mode, (type), uid, gid, size, ...
    let root = owner(".");
    assert_eq!(&root[..6], ["2", "40755", "(2)", "1234", "2345", "4096"]);
    let lost = owner("lost+found");
    assert_eq!(&lost[..6], ["11", "40700", "(2)", "1234", "2345", "16384"]);

    let big = pattern(7, 100 * M as usize);
    {
        let m = Mounted::new(&image, dir.path().join("mnt"));
        let root = &m.dir;
        for d in 0..30 {
            let sub = root.join(format!("d{d}"));
            fs::create_dir(&sub).unwrap();
            for f in 0..100 {
                fs::write(
                    sub.join(format!("f{f}")),
                    pattern(d * 1000 + f, 100 + f as usize * 37),
                )
                .unwrap();
            }
        }
        let mut deep = root.to_path_buf();
        for level in 0..40 {
            deep = deep.join(format!("level{level}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("bottom"), b"deep").unwrap();
        std::os::unix::fs::symlink("d3/f5", root.join("link")).unwrap();
        let mut f = File::create(root.join("big")).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
    }
    // Remount so the reads come from the disk, not the page cache of the first mount.
    {
        let m = Mounted::new(&image, dir.path().join("mnt"));
        let root = &m.dir;
        for d in 0..30 {
            for f in 0..100 {
                let got = fs::read(root.join(format!("d{d}/f{f}"))).unwrap();
                assert_eq!(
                    got,
                    pattern(d * 1000 + f, 100 + f as usize * 37),
                    "d{d}/f{f}"
                );
            }
        }
        let deep: PathBuf = (0..40).map(|l| format!("level{l}")).collect();
        assert_eq!(fs::read(root.join(deep).join("bottom")).unwrap(), b"deep");
        assert_eq!(
            fs::read_link(root.join("link")).unwrap(),
            Path::new("d3/f5")
        );
        assert_eq!(
            fs::read(root.join("link")).unwrap(),
            pattern(3005, 100 + 5 * 37)
        );
        let mut got = Vec::new();
        File::open(root.join("big"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == big, "the 100 MiB file reads back differently");
    }
    assert_fsck_clean(&image);
    // The kernel did put directories into groups that were uninitialised.
    let o = run_tool("dumpe2fs", &[image.to_str().unwrap()]);
    let groups_with_dirs = text(&o.stdout)
        .lines()
        .filter(|l| l.contains(" directories") && !l.contains(" 0 directories"))
        .count();
    assert!(
        groups_with_dirs >= 2,
        "directories in {groups_with_dirs} group(s)"
    );
}

/// Without `resize_inode` the filesystem still grows: offline here (1 GiB, one descriptor
/// block, to 40 GiB, five), where resize2fs moves blocks to make room for the table. (Online
/// growth asks the kernel, which converts to `meta_bg`; that ioctl needs CAP_SYS_RESOURCE.)
#[test]
fn grows_offline_without_resize_inode() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("grow.img");
    format_file(&image, G, &options("grow"));
    {
        let m = Mounted::new(&image, dir.path().join("mnt"));
        fs::write(m.dir.join("keep"), pattern(1, 1 << 20)).unwrap();
    }
    assert_fsck_clean(&image);
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(40 * G)
        .unwrap();
    // -f: the read-only e2fsck above does not record a check.
    let o = run_tool("resize2fs", &["-f", image.to_str().unwrap()]);
    assert!(o.status.success(), "resize2fs failed:\n{}", all_text(&o));
    assert_fsck_clean(&image);
    assert_eq!(dumpe2fs(&image)["Block count"], (40 * G / 4096).to_string());
    let m = Mounted::new(&image, dir.path().join("mnt"));
    assert!(fs::read(m.dir.join("keep")).unwrap() == pattern(1, 1 << 20));
}
