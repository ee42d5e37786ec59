//! The in-place ext4 editor against the reference tools: e2fsck, debugfs and a kernel mount,
//! on a filesystem our formatter made and on one mkfs.ext4 made and the kernel filled.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use qemu_compose::disk::ext4::edit::Editor;
use qemu_compose::disk::ext4::read::{FileType, Filesystem};
use qemu_compose::disk::ext4::tree::{Meta, Time};
use qemu_compose::disk::ext4::{self, Ext4Error, FormatOptions};
use qemu_compose::disk::{BlockSink, RawFile, SparseBuffer};

use crate::harness::{Mounted, all_text, pattern, run_tool, s};

const M: u64 = 1 << 20;

/// What a path should be after the edits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

/// A path's expected type and contents, permissions, owner, mtime and link count.
#[derive(Debug, Clone)]
struct Expect {
    want: Want,
    meta: Meta,
    links: u64,
    ino: u32,
}

fn meta(perm: u16, uid: u32, secs: i64, nanos: u32) -> Meta {
    let t = Time { secs, nanos };
    Meta {
        perm,
        uid,
        gid: uid + 1,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

fn assert_fsck_clean(path: &Path) {
    let o = run_tool("e2fsck", &["-fn", s(path)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "e2fsck -fn {}:\n{}",
        path.display(),
        all_text(&o)
    );
}

/// Edits through an [`Editor`] and remembers what each path must be.
struct Session {
    ed: Editor<RawFile>,
    expect: BTreeMap<PathBuf, Expect>,
    /// Directory path to inode.
    dirs: BTreeMap<PathBuf, u32>,
}

impl Session {
    fn new(ed: Editor<RawFile>) -> Self {
        let root = ed.root();
        Self {
            ed,
            expect: BTreeMap::new(),
            dirs: BTreeMap::from([(PathBuf::from(""), root)]),
        }
    }

    fn split(path: &str) -> (PathBuf, &str) {
        let p = Path::new(path);
        let name = p.file_name().unwrap().to_str().unwrap();
        (p.parent().unwrap().to_path_buf(), name)
    }

    fn dir_ino(&mut self, dir: &Path) -> u32 {
        if let Some(&ino) = self.dirs.get(dir) {
            return ino;
        }
        let parent = self.dir_ino(dir.parent().unwrap());
        let name = dir.file_name().unwrap().as_encoded_bytes();
        let (ino, kind) = self.ed.lookup(parent, name).unwrap().unwrap();
        assert_eq!(kind, FileType::Dir);
        self.dirs.insert(dir.to_path_buf(), ino);
        ino
    }

    fn mkdir(&mut self, path: &str, m: Meta) {
        let (dir, name) = Self::split(path);
        let parent = self.dir_ino(&dir);
        let ino = self.ed.mkdir(parent, name.as_bytes(), m).unwrap();
        self.dirs.insert(PathBuf::from(path), ino);
        self.expect.insert(
            path.into(),
            Expect {
                want: Want::Dir,
                meta: m,
                links: 2,
                ino,
            },
        );
        if let Some(p) = self.expect.get_mut(&dir) {
            p.links += 1;
        }
    }

    /// A file of `size` bytes with pattern data in `ranges` and holes elsewhere.
    fn file(&mut self, path: &str, m: Meta, size: u64, ranges: &[(u64, u64)]) -> u32 {
        let (dir, name) = Self::split(path);
        let parent = self.dir_ino(&dir);
        let mut content = vec![0u8; size as usize];
        for (i, &(at, len)) in ranges.iter().enumerate() {
            let end = (at + len).min(size);
            content[at as usize..end as usize]
                .copy_from_slice(&pattern(i as u64 + size, (end - at) as usize));
        }
        let (ino, runs) = self
            .ed
            .create_file(parent, name.as_bytes(), m, size, ranges)
            .unwrap();
        for r in runs {
            let from = r.file_offset as usize;
            self.ed
                .device_mut()
                .write_at(r.offset, &content[from..from + r.len as usize])
                .unwrap();
        }
        self.expect.insert(
            path.into(),
            Expect {
                want: Want::File(content),
                meta: m,
                links: 1,
                ino,
            },
        );
        ino
    }

    fn symlink(&mut self, path: &str, m: Meta, target: &[u8]) {
        let (dir, name) = Self::split(path);
        let parent = self.dir_ino(&dir);
        let ino = self.ed.symlink(parent, name.as_bytes(), m, target).unwrap();
        self.expect.insert(
            path.into(),
            Expect {
                want: Want::Symlink(target.to_vec()),
                meta: m,
                links: 1,
                ino,
            },
        );
    }

    fn link(&mut self, path: &str, existing: &str, ino: u32) {
        let (dir, name) = Self::split(path);
        let parent = self.dir_ino(&dir);
        self.ed.link(parent, name.as_bytes(), ino).unwrap();
        let mut e = self.expect[Path::new(existing)].clone();
        e.links += 1;
        for other in self.expect.values_mut().filter(|o| o.ino == ino) {
            other.links = e.links;
        }
        self.expect.insert(path.into(), e);
    }

    fn unlink(&mut self, path: &str) {
        let (dir, name) = Self::split(path);
        let parent = self.dir_ino(&dir);
        self.ed.unlink(parent, name.as_bytes()).unwrap();
        if let Some(gone) = self.expect.remove(Path::new(path)) {
            for other in self.expect.values_mut().filter(|o| o.ino == gone.ino) {
                other.links -= 1;
            }
        }
    }

    /// The edits both filesystems get, in a new top-level directory `ed`.
    fn standard_edits(&mut self) {
        let d = "ed";
        self.mkdir(d, meta(0o750, 1000, 1_700_000_001, 123_456_789));
        // Holes: data in three places of a 10 MiB file.
        let holes = self.file(
            &format!("{d}/holes"),
            meta(0o640, 1000, 1_700_000_002, 1),
            10 * M,
            &[(0, 5000), (M, 4096), (9 * M + 100, 300)],
        );
        // 30 extents: one leaf block. 2000 extents: six leaves and an index block.
        let every_other = |n: u64| (0..n).map(|i| (i * 8192, 4096)).collect::<Vec<_>>();
        self.file(
            &format!("{d}/leaf"),
            meta(0o600, 0, 1_600_000_000, 999_999_999),
            30 * 8192,
            &every_other(30),
        );
        self.file(
            &format!("{d}/deep"),
            meta(0o4755, 70000, 4_102_444_800, 5),
            2000 * 8192,
            &every_other(2000),
        );
        let gone = format!("{d}/gone");
        self.file(
            &gone,
            meta(0o644, 0, 1_700_000_000, 0),
            2000 * 8192,
            &every_other(2000),
        );
        self.unlink(&gone);
        self.symlink(
            &format!("{d}/fast"),
            meta(0o777, 5, 1_700_000_003, 3),
            b"holes",
        );
        self.symlink(
            &format!("{d}/slow"),
            meta(0o777, 5, 1_700_000_004, 4),
            &[b'x'; 300],
        );
        self.link("hard", &format!("{d}/holes"), holes);
        // Replacing: unlink, then create again.
        let r = format!("{d}/replaced");
        self.file(&r, meta(0o644, 1, 1_700_000_005, 5), 100, &[(0, 100)]);
        self.unlink(&r);
        self.file(&r, meta(0o600, 2, 1_700_000_006, 6), 50_000, &[(0, 50_000)]);
        // 10,000 entries (some with 255-byte names): a hashed directory.
        let big = format!("{d}/big");
        self.mkdir(&big, meta(0o755, 0, 1_700_000_007, 7));
        for i in 0..10_000u64 {
            let name = if i % 100 == 0 {
                format!("{i:0>255}")
            } else {
                format!("entry-{i:05}")
            };
            let data: &[(u64, u64)] = if i % 1000 == 0 { &[(0, 10)] } else { &[] };
            let size = if i % 1000 == 0 { 10 } else { 0 };
            self.file(
                &format!("{big}/{name}"),
                meta(0o644, 0, 1_700_000_008, 8),
                size,
                data,
            );
        }
        for i in (0..10_000u64).step_by(777).filter(|i| i % 100 != 0) {
            self.unlink(&format!("{big}/entry-{i:05}"));
        }
        let sub = format!("{d}/sub");
        self.mkdir(&sub, meta(0o700, 3, 1_700_000_009, 9));
        self.mkdir(&format!("{sub}/deeper"), meta(0o700, 3, 1_700_000_010, 10));
        self.file(
            &format!("{sub}/deeper/f"),
            meta(0o644, 3, 1_700_000_011, 11),
            5,
            &[(0, 5)],
        );
    }

    /// Finishes the edits, checks the image with e2fsck, debugfs, our reader and a mount.
    fn finish_and_check(self, image: &Path, mnt: &Path) {
        let raw = self.ed.finish().unwrap();
        raw.finish().unwrap();
        assert_fsck_clean(image);
        let stat = run_tool("debugfs", &["-R", "stat /ed/deep", s(image)]);
        let stat = all_text(&stat);
        if self.expect.contains_key(Path::new("ed/deep")) {
            assert!(stat.contains("Links: 1"), "{stat}");
            assert!(stat.contains("(ETB1)"), "a depth-2 extent tree: {stat}");
        }
        let big = all_text(&run_tool("debugfs", &["-R", "stat /ed/big", s(image)]));
        assert!(
            big.contains("Flags: 0x81000"),
            "an indexed directory: {big}"
        );
        // debugfs's `ls -p` lines: /inode/mode/uid/gid/name/size/.
        let ls = all_text(&run_tool("debugfs", &["-R", "ls -p /ed", s(image)]));
        let mut listed: Vec<(String, u32, u32, u32)> = ls
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('/').collect();
                (f.len() >= 7 && f[5] != "." && f[5] != "..").then(|| {
                    (
                        format!("ed/{}", f[5]),
                        u32::from_str_radix(f[2], 8).unwrap() & 0o7777,
                        f[3].parse().unwrap(),
                        f[4].parse().unwrap(),
                    )
                })
            })
            .collect();
        listed.sort();
        let wanted: Vec<(String, u32, u32, u32)> = self
            .expect
            .iter()
            .filter(|(p, _)| p.parent() == Some(Path::new("ed")))
            .map(|(p, e)| {
                let m = e.meta;
                (p.display().to_string(), u32::from(m.perm), m.uid, m.gid)
            })
            .collect();
        assert_eq!(listed, wanted, "debugfs ls -p /ed");
        let fs = Filesystem::open(open_raw(image)).unwrap();
        // Each lookup reads the whole of ed/big: a sample of it is enough here.
        let sample = self
            .expect
            .iter()
            .enumerate()
            .filter(|(i, (p, _))| p.parent() != Some(Path::new("ed/big")) || i % 500 == 0);
        for (_, (path, e)) in sample {
            let st = fs
                .lookup(format!("/{}", path.display()).as_bytes())
                .unwrap();
            assert_eq!(st.mtime, e.meta.mtime, "{}", path.display());
            assert_eq!(u64::from(st.links), e.links, "{}", path.display());
        }
        let m = Mounted::new(image, mnt.to_path_buf());
        for (path, e) in &self.expect {
            let full = m.dir.join(path);
            let md = fs::symlink_metadata(&full).unwrap();
            let shown = path.display();
            assert_eq!(md.mode() & 0o7777, u32::from(e.meta.perm), "{shown}");
            assert_eq!((md.uid(), md.gid()), (e.meta.uid, e.meta.gid), "{shown}");
            assert_eq!(
                (md.mtime(), md.mtime_nsec()),
                (e.meta.mtime.secs, i64::from(e.meta.mtime.nanos)),
                "{shown}"
            );
            assert_eq!(md.nlink(), e.links, "{shown}");
            match &e.want {
                Want::Dir => assert!(md.is_dir(), "{shown}"),
                Want::File(c) => assert!(fs::read(&full).unwrap() == *c, "{shown}"),
                Want::Symlink(t) => {
                    assert_eq!(
                        fs::read_link(&full).unwrap().as_os_str().as_encoded_bytes(),
                        t
                    )
                }
            }
        }
        let names = fs::read_dir(m.dir.join("ed/big")).unwrap().count();
        let want = self
            .expect
            .keys()
            .filter(|p| p.parent() == Some(Path::new("ed/big")))
            .count();
        assert_eq!(names, want);
        // The kernel adds and removes files in the edited directories.
        fs::write(m.dir.join("ed/big/kernel-new"), b"k").unwrap();
        fs::remove_file(m.dir.join("ed/big/entry-00001")).unwrap();
        fs::write(m.dir.join("ed/sub/k2"), pattern(1, 100_000)).unwrap();
        fs::create_dir(m.dir.join("ed/kdir")).unwrap();
        fs::remove_file(m.dir.join("ed/replaced")).unwrap();
        fs::set_permissions(m.dir.join("ed/sub/k2"), fs::Permissions::from_mode(0o600)).unwrap();
        drop(m);
        assert_fsck_clean(image);
    }
}

fn open_raw(image: &Path) -> RawFile {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let len = file.metadata().unwrap().len();
    RawFile::new(file, len).unwrap()
}

#[test]
fn edits_our_filesystem_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ours.img");
    let file = File::create(&image).unwrap();
    let mut raw = RawFile::new(file, 256 * M).unwrap();
    ext4::format(&mut raw, &FormatOptions::new("ours")).unwrap();
    raw.finish().unwrap();
    let mut s = Session::new(Editor::open(open_raw(&image)).unwrap());
    s.standard_edits();
    // Remove lost+found's sibling names only; lost+found stays.
    assert_eq!(
        s.ed.lookup(2, b"lost+found").unwrap(),
        Some((11, FileType::Dir))
    );
    s.finish_and_check(&image, &dir.path().join("mnt"));
}

#[test]
fn edits_a_filesystem_mkfs_made_and_the_kernel_filled() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("mkfs.img");
    File::create(&image).unwrap().set_len(600 * M).unwrap();
    let o = run_tool("mkfs.ext4", &["-q", "-F", s(&image)]);
    assert!(o.status.success(), "{}", all_text(&o));
    let mnt = dir.path().join("mnt");
    {
        let m = Mounted::new(&image, mnt.clone());
        for d in 0..5 {
            let sub = m.dir.join(format!("k{d}"));
            fs::create_dir(&sub).unwrap();
            for f in 0..50 {
                fs::write(
                    sub.join(format!("f{f}")),
                    pattern(d * 100 + f, 3000 * f as usize),
                )
                .unwrap();
            }
        }
        fs::write(m.dir.join("kbig"), pattern(9, 20 * M as usize)).unwrap();
        // A hashed directory and a file of 100 extents (every other block), both the
        // kernel's.
        fs::create_dir(m.dir.join("kh")).unwrap();
        for i in 0..3000 {
            fs::write(m.dir.join(format!("kh/kernel-file-{i}")), b"h").unwrap();
        }
        let sparse = File::create(m.dir.join("ksparse")).unwrap();
        for i in 0..100u64 {
            std::os::unix::fs::FileExt::write_all_at(&sparse, &[1; 4096], i * 8192).unwrap();
        }
        sparse.sync_all().unwrap();
        // Extended attributes too large for the inode: a block each, shared by f1 and f2
        // (the kernel shares identical ones), f3's own.
        let big_value = pattern(5, 3000);
        for (f, value) in [
            ("f1", &big_value),
            ("f2", &big_value),
            ("f3", &pattern(6, 3000)),
        ] {
            rustix::fs::setxattr(
                m.dir.join("k4").join(f),
                "user.big",
                value,
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink("k0/f1", m.dir.join("klink")).unwrap();
    }
    let acl = |f: &str| {
        let out = all_text(&run_tool(
            "debugfs",
            &["-R", &format!("stat {f}"), s(&image)],
        ));
        let at = out.find("File ACL: ").unwrap() + 10;
        out[at..].split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(acl("k4/f1"), acl("k4/f2"), "the kernel shares the block");
    assert_ne!(acl("k4/f1"), acl("k4/f3"));
    assert_ne!(acl("k4/f3"), "0");
    let kh = all_text(&run_tool("debugfs", &["-R", "stat kh", s(&image)]));
    assert!(kh.contains("Flags: 0x81000"), "the kernel indexed kh: {kh}");
    let sparse = all_text(&run_tool("debugfs", &["-R", "stat ksparse", s(&image)]));
    assert!(
        sparse.contains("(ETB0)"),
        "ksparse has an extent leaf: {sparse}"
    );
    let mut s = Session::new(Editor::open(open_raw(&image)).unwrap());
    s.standard_edits();
    // The kernel's hashed directory loses and gains names; its fragmented file goes.
    for i in (0..3000).step_by(7) {
        s.unlink(&format!("kh/kernel-file-{i}"));
    }
    for i in 0..500 {
        s.file(
            &format!("kh/ours-{i}"),
            meta(0o644, 0, 1_700_000_030, i),
            0,
            &[],
        );
    }
    s.unlink("ksparse");
    // Into and out of the kernel's directories: remove, replace and link its files.
    s.unlink("k1/f3");
    s.unlink("kbig");
    s.unlink("klink");
    s.unlink("k2/f7");
    // Releasing extended attribute blocks: f3's is freed, the one f1 shares with f2 keeps
    // one reference.
    s.unlink("k4/f1");
    s.unlink("k4/f3");
    s.file("k2/f7", meta(0o644, 9, 1_700_000_020, 20), 7, &[(0, 7)]);
    let (ino, _) = s.ed.lookup(s.dirs[Path::new("")], b"k0").unwrap().unwrap();
    let (f2, _) = s.ed.lookup(ino, b"f2").unwrap().unwrap();
    s.ed.link(s.dirs[Path::new("")], b"k0-f2", f2).unwrap();
    s.mkdir("k3/new", meta(0o755, 0, 1_700_000_021, 21));
    // The kernel's directory gets new permissions, owner and times.
    let k3 = s.dir_ino(Path::new("k3"));
    let k3_meta = meta(0o711, 4242, 1_700_000_023, 23);
    s.ed.set_meta(k3, k3_meta).unwrap();
    s.expect.insert(
        "k3".into(),
        Expect {
            want: Want::Dir,
            meta: k3_meta,
            links: 3,
            ino: k3,
        },
    );
    s.file("k3/new/x", meta(0o644, 0, 1_700_000_022, 22), 3, &[(0, 3)]);
    let free_before = s.ed.free_blocks();
    assert!(free_before > 0);
    s.finish_and_check(&image, &mnt);
    let m = Mounted::new(&image, mnt.clone());
    assert!(!m.dir.join("kbig").exists());
    assert_eq!(fs::read(m.dir.join("k0-f2")).unwrap(), pattern(2, 6000));
    assert_eq!(fs::metadata(m.dir.join("k0/f2")).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.dir.join("k4/f9")).unwrap(), pattern(409, 27000));
    assert_eq!(fs::metadata(m.dir.join("k3")).unwrap().nlink(), 3);
    assert!(!m.dir.join("ksparse").exists());
    let kh: Vec<String> = fs::read_dir(m.dir.join("kh"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kh.len(), 3000 - 3000usize.div_ceil(7) + 500);
    assert!(
        kh.contains(&"kernel-file-1".to_string()) && !kh.contains(&"kernel-file-7".to_string())
    );
    assert_eq!(fs::read(m.dir.join("kh/kernel-file-1")).unwrap(), b"h");
    let mut value = vec![0u8; 4000];
    let n = rustix::fs::getxattr(m.dir.join("k4/f2"), "user.big", &mut value[..]).unwrap();
    assert_eq!(value[..n], pattern(5, 3000));
}

// ---- Random edit sequences --------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Mkdir(usize, u8),
    File(usize, u8, u64, Vec<(u64, u64)>),
    Symlink(usize, u8, usize),
    Link(usize, usize, u8),
    Unlink(usize),
    /// Many empty files with 60-byte names: a directory of several blocks, indexed.
    Bulk(usize, u8, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8usize, any::<u8>()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        (
            0..8usize,
            any::<u8>(),
            0..100_000u64,
            prop::collection::vec((0..100_000u64, 1..20_000u64), 0..8)
        )
            .prop_map(|(d, n, size, mut ranges)| {
                ranges.sort_unstable();
                let mut out: Vec<(u64, u64)> = Vec::new();
                for (at, len) in ranges {
                    if out.last().is_none_or(|&(a, l)| a + l < at) {
                        out.push((at, len));
                    }
                }
                Op::File(d, n, size, out)
            }),
        (0..8usize, any::<u8>(), 1..200usize).prop_map(|(d, n, l)| Op::Symlink(d, n, l)),
        (0..64usize, 0..8usize, any::<u8>()).prop_map(|(f, d, n)| Op::Link(f, d, n)),
        (0..64usize).prop_map(Op::Unlink),
        (0..8usize, any::<u8>(), 1..400usize).prop_map(|(d, n, c)| Op::Bulk(d, n, c)),
    ]
}

/// The model: directories by inode, and each (directory, name) with inode and what it is.
#[derive(Default)]
struct Model {
    dirs: Vec<u32>,
    names: BTreeMap<(u32, Vec<u8>), (u32, Want)>,
}

fn apply(ed: &mut Editor<SparseBuffer>, model: &mut Model, op: &Op) {
    let m = meta(0o644, 0, 1_700_000_000, 0);
    let name = |n: u8| format!("n{n}").into_bytes();
    let dir = |d: usize| model.dirs[d % model.dirs.len()];
    match op {
        Op::Mkdir(d, n) => {
            let parent = dir(*d);
            if model.names.contains_key(&(parent, name(*n))) {
                return;
            }
            let ino = ed.mkdir(parent, &name(*n), m).unwrap();
            model.dirs.push(ino);
            model.names.insert((parent, name(*n)), (ino, Want::Dir));
        }
        Op::File(d, n, size, ranges) => {
            let parent = dir(*d);
            if model.names.contains_key(&(parent, name(*n))) {
                return;
            }
            let mut content = vec![0u8; *size as usize];
            for &(at, len) in ranges {
                let end = (at + len).min(*size);
                if at < end {
                    content[at as usize..end as usize]
                        .copy_from_slice(&pattern(at, (end - at) as usize));
                }
            }
            let (ino, runs) = ed.create_file(parent, &name(*n), m, *size, ranges).unwrap();
            for r in runs {
                let from = r.file_offset as usize;
                ed.device_mut()
                    .write_at(r.offset, &content[from..from + r.len as usize])
                    .unwrap();
            }
            model
                .names
                .insert((parent, name(*n)), (ino, Want::File(content)));
        }
        Op::Symlink(d, n, len) => {
            let parent = dir(*d);
            if model.names.contains_key(&(parent, name(*n))) {
                return;
            }
            let target = vec![b't'; *len];
            let ino = ed.symlink(parent, &name(*n), m, &target).unwrap();
            model
                .names
                .insert((parent, name(*n)), (ino, Want::Symlink(target)));
        }
        Op::Link(f, d, n) => {
            let files: Vec<(u32, Want)> = model
                .names
                .values()
                .filter(|(_, w)| !matches!(w, Want::Dir))
                .cloned()
                .collect();
            let parent = dir(*d);
            if files.is_empty() || model.names.contains_key(&(parent, name(*n))) {
                return;
            }
            let target = files[f % files.len()].clone();
            ed.link(parent, &name(*n), target.0).unwrap();
            model.names.insert((parent, name(*n)), target);
        }
        Op::Bulk(d, n, count) => {
            let parent = dir(*d);
            for i in 0..*count {
                let name = format!("{:0>60}", format!("b{n}-{i}")).into_bytes();
                if model.names.contains_key(&(parent, name.clone())) || ed.free_inodes() < 100 {
                    continue;
                }
                let (ino, _) = ed.create_file(parent, &name, m, 0, &[]).unwrap();
                model
                    .names
                    .insert((parent, name), (ino, Want::File(Vec::new())));
            }
        }
        Op::Unlink(f) => {
            let keys: Vec<(u32, Vec<u8>)> = model
                .names
                .iter()
                .filter(|(_, (_, w))| !matches!(w, Want::Dir))
                .map(|(k, _)| k.clone())
                .collect();
            if keys.is_empty() {
                return;
            }
            let key = &keys[f % keys.len()];
            ed.unlink(key.0, &key.1).unwrap();
            model.names.remove(key);
        }
    }
}

/// Our reader sees exactly the model: names, types, contents, link counts.
fn check_model(dev: &SparseBuffer, model: &Model) {
    let fs = Filesystem::open(dev).unwrap();
    for &d in &model.dirs {
        let mut seen: Vec<Vec<u8>> = fs
            .read_dir(&fs.stat(d).unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .filter(|n| !(d == 2 && n == b"lost+found"))
            .collect();
        seen.sort();
        let want: Vec<Vec<u8>> = model
            .names
            .keys()
            .filter(|(p, _)| *p == d)
            .map(|(_, n)| n.clone())
            .collect();
        assert_eq!(seen, want, "directory inode {d}");
    }
    for (ino, w) in model.names.values() {
        let st = fs.stat(*ino).unwrap();
        let names = model.names.values().filter(|(i, _)| i == ino).count() as u16;
        match w {
            Want::Dir => assert_eq!(st.kind, FileType::Dir),
            Want::File(c) => {
                assert_eq!(st.links, names);
                let mut got = vec![0u8; c.len()];
                for m in fs.data(&st).unwrap() {
                    let from = m.file_offset as usize;
                    fs.read_mapped(m.offset.unwrap(), &mut got[from..from + m.len as usize])
                        .unwrap();
                }
                assert!(got == *c, "inode {ino} contents");
            }
            Want::Symlink(t) => assert_eq!(&fs.read_link(&st).unwrap(), t),
        }
    }
}

fn fsck_buffer(dev: &SparseBuffer, dir: &Path) {
    let image = dir.join("p.img");
    let mut raw = RawFile::new(File::create(&image).unwrap(), dev.len()).unwrap();
    for (at, bytes) in dev.extents() {
        raw.write_at(at, bytes).unwrap();
    }
    raw.finish().unwrap();
    assert_fsck_clean(&image);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

    /// Three rounds of random edits on a small filesystem (ours, or mkfs.ext4's), e2fsck
    /// clean and our reader seeing the model after each.
    #[test]
    fn random_edits_stay_clean(
        mkfs in any::<bool>(),
        rounds in prop::collection::vec(prop::collection::vec(op(), 1..40), 3)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = SparseBuffer::new(32 * M);
        if mkfs {
            let image = dir.path().join("mkfs.img");
            File::create(&image).unwrap().set_len(32 * M).unwrap();
            let o = run_tool("mkfs.ext4", &["-q", "-F", "-b", "4096", s(&image)]);
            assert!(o.status.success(), "{}", all_text(&o));
            let bytes = fs::read(&image).unwrap();
            for (i, chunk) in bytes.chunks(4096).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    dev.write_at(i as u64 * 4096, chunk).unwrap();
                }
            }
        } else {
            ext4::format(&mut dev, &FormatOptions::new("p")).unwrap();
        }
        let mut model = Model { dirs: vec![2], ..Model::default() };
        for ops in &rounds {
            let mut ed = Editor::open(dev).unwrap();
            for op in ops {
                apply(&mut ed, &mut model, op);
            }
            dev = ed.finish().unwrap();
            fsck_buffer(&dev, dir.path());
            check_model(&dev, &model);
        }
    }
}

#[test]
fn running_out_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = SparseBuffer::new(8 * M);
    ext4::format(&mut dev, &FormatOptions::new("full")).unwrap();
    let m = meta(0o644, 0, 1_700_000_000, 0);
    let mut ed = Editor::open(dev).unwrap();
    let free = ed.free_blocks();
    let err = ed
        .create_file(2, b"huge", m, (free + 1) * 4096, &[(0, (free + 1) * 4096)])
        .unwrap_err();
    assert!(matches!(err, Ext4Error::NoSpace { .. }), "{err}");
    // A file that fits, then inodes until none is left.
    let (_, runs) = ed
        .create_file(2, b"fits", m, 4096 * 10, &[(0, 40960)])
        .unwrap();
    assert_eq!(runs.len(), 1);
    let free_inodes = ed.free_inodes();
    for i in 0..free_inodes {
        ed.create_file(2, format!("f{i}").as_bytes(), m, 0, &[])
            .unwrap();
    }
    let err = ed.create_file(2, b"one-more", m, 0, &[]).unwrap_err();
    assert!(matches!(err, Ext4Error::NoInodes { .. }), "{err}");
    assert_eq!(ed.free_inodes(), 0);
    let dev = ed.finish().unwrap();
    fsck_buffer(&dev, dir.path());
}

/// Fills group 0 so that inodes and blocks come from groups that are still INODE_UNINIT and
/// BLOCK_UNINIT (whose bitmaps the editor makes: superblock backups, reserved descriptor
/// blocks, other groups' flex_bg metadata), on our filesystem and on mkfs.ext4's.
#[test]
fn allocates_from_uninitialised_groups() {
    let dir = tempfile::tempdir().unwrap();
    for maker in ["ours", "mkfs"] {
        let image = dir.path().join(format!("{maker}.img"));
        if maker == "ours" {
            let mut raw = RawFile::new(File::create(&image).unwrap(), 1 << 30).unwrap();
            ext4::format(&mut raw, &FormatOptions::new("u")).unwrap();
            raw.finish().unwrap();
        } else {
            File::create(&image).unwrap().set_len(1 << 30).unwrap();
            let o = run_tool("mkfs.ext4", &["-q", "-F", s(&image)]);
            assert!(o.status.success(), "{}", all_text(&o));
        }
        let before = run_tool("dumpe2fs", &[s(&image)]);
        let uninit = all_text(&before).matches("BLOCK_UNINIT").count();
        assert!(uninit > 2, "{maker}: {uninit} BLOCK_UNINIT groups");
        let mut ed = Editor::open(open_raw(&image)).unwrap();
        let m = meta(0o644, 0, 1_700_000_000, 0);
        let d = ed.mkdir(2, b"many", m).unwrap();
        let per_group = 8192 + 100;
        for i in 0..per_group {
            ed.create_file(d, format!("{i}").as_bytes(), m, 0, &[])
                .unwrap();
        }
        // 700 MiB: more than the first groups hold.
        let size = 700 * M;
        let (_, runs) = ed.create_file(2, b"big", m, size, &[(0, size)]).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), size);
        let last = runs.last().unwrap();
        ed.device_mut()
            .write_at(last.offset + last.len - 4, b"tail")
            .unwrap();
        ed.finish().unwrap().finish().unwrap();
        assert_fsck_clean(&image);
        let after = all_text(&run_tool("dumpe2fs", &[s(&image)]));
        assert!(
            after.matches("BLOCK_UNINIT").count() < uninit,
            "{maker}: no group was initialised"
        );
        let m = Mounted::new(&image, dir.path().join("mnt"));
        assert_eq!(fs::read_dir(m.dir.join("many")).unwrap().count(), per_group);
        let big = fs::read(m.dir.join("big")).unwrap();
        assert_eq!(&big[big.len() - 4..], b"tail");
        fs::write(m.dir.join("kernel"), b"after").unwrap();
        drop(m);
        assert_fsck_clean(&image);
    }
}

/// With `metadata_csum_seed` the checksums' seed is stored, not derived from the UUID, which
/// `tune2fs -U` then changes; `orphan_file` (an upstream 1.47 default) is kept as it is.
#[test]
fn keeps_a_stored_checksum_seed_and_the_orphan_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("seed.img");
    File::create(&image).unwrap().set_len(64 * M).unwrap();
    let o = run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "metadata_csum_seed,orphan_file",
            s(&image),
        ],
    );
    assert!(o.status.success(), "{}", all_text(&o));
    let o = run_tool("tune2fs", &["-U", "random", s(&image)]);
    assert!(o.status.success(), "{}", all_text(&o));
    let features = all_text(&run_tool("dumpe2fs", &["-h", s(&image)]));
    assert!(
        features.contains("metadata_csum_seed") && features.contains("orphan_file"),
        "{features}"
    );
    let mut s = Session::new(Editor::open(open_raw(&image)).unwrap());
    s.mkdir("d", meta(0o755, 0, 1_700_000_000, 0));
    s.file("d/f", meta(0o644, 0, 1_700_000_000, 1), 9000, &[(0, 9000)]);
    s.symlink("l", meta(0o777, 0, 1_700_000_000, 2), &[b'y'; 100]);
    s.unlink("d/f");
    s.file("d/f", meta(0o644, 0, 1_700_000_000, 3), 5, &[(0, 5)]);
    s.ed.finish().unwrap().finish().unwrap();
    assert_fsck_clean(&image);
    let m = Mounted::new(&image, dir.path().join("mnt"));
    assert_eq!(fs::read(m.dir.join("d/f")).unwrap(), pattern(5, 5));
    assert_eq!(
        fs::read_link(m.dir.join("l")).unwrap(),
        Path::new(&"y".repeat(100))
    );
}

/// `dir_nlink`: a directory's link count goes up with each subdirectory until 65000; past
/// that it counts 1, as the kernel and e2fsck count it.
#[test]
fn more_than_65000_subdirectories_count_one_link() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("nlink.img");
    let mut raw = RawFile::new(File::create(&image).unwrap(), 1 << 30).unwrap();
    ext4::format(&mut raw, &FormatOptions::new("n")).unwrap();
    raw.finish().unwrap();
    let mut ed = Editor::open(open_raw(&image)).unwrap();
    let m = meta(0o755, 0, 1_700_000_000, 0);
    let top = ed.mkdir(2, b"top", m).unwrap();
    for i in 0..64_998 {
        ed.mkdir(top, format!("{i}").as_bytes(), m).unwrap();
    }
    assert_eq!(ed.stat(top).unwrap().links, 65_000);
    ed.mkdir(top, b"one-more", m).unwrap();
    assert_eq!(ed.stat(top).unwrap().links, 1);
    ed.mkdir(top, b"and-another", m).unwrap();
    assert_eq!(ed.stat(top).unwrap().links, 1);
    ed.finish().unwrap().finish().unwrap();
    assert_fsck_clean(&image);
}
