//! The qcow2 writer and reader against QEMU's own tools: `qemu-img check`, `info`, `compare`,
//! `convert` and `qemu-io`. These tools are required; a missing one fails the test.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use qemu_compose::disk::qcow2::{
    Backing, BackingFormat, ImageFormat, Qcow2Error, Qcow2Image, grow, probe_format,
    write_data_image, write_overlay,
};
use qemu_compose::disk::{BlockSink, RawFile, SparseBuffer};
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{
    all_text, qemu_img_create, qemu_img_create_with, qemu_img_info, run_tool, s, text, tool_ok,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// `qemu-img check` must find no errors, corruptions or leaks.
pub fn assert_check_clean(path: &Path) {
    let out = run_tool("qemu-img", &["check", "--output=json", s(path)]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {} exited with {}: {stdout}{}",
        path.display(),
        out.status,
        text(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["check-errors"], 0, "{stdout}");
    for key in ["corruptions", "leaks", "corruptions-fixed", "leaks-fixed"] {
        assert!(
            report[key].is_null() || report[key] == 0,
            "{key} in {stdout}"
        );
    }
}

/// The qcow2 fields every image we write must have.
fn assert_our_format(info: &Value, virtual_size: u64) {
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], virtual_size);
    assert_eq!(info["cluster-size"], 65536);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["compat"], "1.1");
    assert_eq!(data["refcount-bits"], 16);
    assert_eq!(data["lazy-refcounts"], false);
    assert_eq!(data["compression-type"], "zlib");
    assert_eq!(data["extended-l2"], false);
    assert_eq!(data["corrupt"], false);
}

/// Images are small and written to a fresh file, as the caller of the writer would.
fn create(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap()
}

/// Writes `contents` both as a qcow2 image and as a raw reference file.
fn write_pair(dir: &Path, size: u64, contents: &SparseBuffer) -> (PathBuf, PathBuf) {
    let qcow2 = dir.join("image.qcow2");
    let raw = dir.join("reference.raw");
    write_data_image(&create(&qcow2), size, contents).unwrap();
    let mut reference = RawFile::new(create(&raw), size).unwrap();
    for (offset, data) in contents.extents() {
        reference.write_at(offset, data).unwrap();
    }
    reference.finish().unwrap();
    (qcow2, raw)
}

fn assert_same_as_raw(qcow2: &Path, raw: &Path) {
    let out = run_tool(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(qcow2), s(raw)],
    );
    assert!(out.status.success(), "qemu-img compare: {}", all_text(&out));
}

/// Converts `image` to raw with qemu-img and returns its bytes (for small images only).
fn qemu_raw_bytes(image: &Path) -> Vec<u8> {
    let out = image.with_extension("converted.raw");
    tool_ok("qemu-img", &["convert", "-O", "raw", s(image), s(&out)]);
    fs::read(out).unwrap()
}

/// Our reader returns exactly the bytes qemu-img does, for the whole (small) disk.
fn assert_reader_matches_qemu(image: &Path) {
    let expected = qemu_raw_bytes(image);
    let ours = Qcow2Image::open(image).unwrap();
    assert_eq!(ours.virtual_size(), expected.len() as u64);
    let mut got = vec![0xAA; expected.len()];
    ours.read_at(0, &mut got).unwrap();
    // Compare by cluster to keep a failure message readable.
    for (i, (a, b)) in got.chunks(4096).zip(expected.chunks(4096)).enumerate() {
        assert!(a == b, "{}: 4 KiB block {i} differs", image.display());
    }
}

#[test]
fn empty_images_from_64k_to_64t_are_clean() {
    let dir = TempDir::new().unwrap();
    for size in [64 * KIB, MIB + 512, 10 * GIB, TIB, 64 * TIB] {
        let path = dir.path().join(format!("empty-{size}.qcow2"));
        let summary = write_data_image(&create(&path), size, &SparseBuffer::new(0)).unwrap();
        assert_eq!(summary.data_clusters, 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), summary.file_size);
        // The L1 table of 64 TiB is 1 MiB; everything else is a few clusters.
        assert!(
            summary.file_size <= 20 * 65536,
            "{size}: {}",
            summary.file_size
        );
        assert_check_clean(&path);
        let info = qemu_img_info(&path);
        assert_our_format(&info, size);
        assert!(info["backing-filename"].is_null());

        let image = Qcow2Image::open(&path).unwrap();
        assert_eq!((image.version(), image.virtual_size()), (3, size));
        assert_eq!(image.allocated_clusters().unwrap(), 0);
        let mut buf = [0xAA; 4096];
        image.read_at(size - 4096, &mut buf).unwrap();
        assert_eq!(buf, [0; 4096]);
        assert_eq!(
            probe_format(&path).unwrap(),
            ImageFormat::Qcow2 { version: 3 }
        );
    }
}

#[test]
fn data_image_holds_exactly_its_non_zero_clusters() {
    let dir = TempDir::new().unwrap();
    let size = 3 * GIB + 100 * KIB; // the last cluster is partial
    let mut contents = SparseBuffer::new(size);
    contents.write_at(0, b"boot sector").unwrap(); // cluster 0
    contents.write_at(512 * MIB - 10, &[7; 20]).unwrap(); // clusters 8191 and 8192: two L2s
    contents.write_at(GIB, &[0; 200_000]).unwrap(); // zeros only: not allocated
    contents
        .write_at(2 * GIB + 65_530, &[0, 0, 0, 0, 0, 0, 9])
        .unwrap(); // only 2nd cluster
    contents.write_at(size - 3, b"end").unwrap(); // the partial last cluster
    let dense: Vec<u8> = (0..3 * MIB as usize + 5)
        .map(|i| (i % 251) as u8 + 1)
        .collect();
    contents.write_at(700 * MIB + 1, &dense).unwrap(); // 49 clusters, written in runs
    let (qcow2, raw) = write_pair(dir.path(), size, &contents);

    assert_check_clean(&qcow2);
    assert_our_format(&qemu_img_info(&qcow2), size);
    assert_same_as_raw(&qcow2, &raw);

    let image = Qcow2Image::open(&qcow2).unwrap();
    assert_eq!(image.allocated_clusters().unwrap(), 5 + 49);
    drop(image);

    // qemu-img check ignores refcounts past the end of the file; a write that makes QEMU
    // allocate a cluster there would expose them.
    tool_ok("qemu-io", &["-c", "write -P 0x42 2G 128k", s(&qcow2)]);
    assert_check_clean(&qcow2);
    contents.write_at(2 * GIB, &[0x42; 128 * 1024]).unwrap();
    let image = Qcow2Image::open(&qcow2).unwrap();
    // The second of the two clusters written was allocated already.
    assert_eq!(image.allocated_clusters().unwrap(), 6 + 49);
    let ranges = [
        (0, 64 * KIB),
        (512 * MIB - 65536, 128 * KIB),
        (2 * GIB - 4096, 200 * KIB),
        (700 * MIB - 4096, 3 * MIB + 8192),
        (size - 4096, 4096),
    ];
    for (offset, len) in ranges {
        let mut ours = vec![0xAA; len as usize];
        let mut expected = vec![0; len as usize];
        image.read_at(offset, &mut ours).unwrap();
        contents.read_at(offset, &mut expected);
        assert!(ours == expected, "bytes at {offset} differ");
    }
    assert!(matches!(
        image.read_at(size - 2, &mut [0; 3]),
        Err(Qcow2Error::OutOfRange { .. })
    ));
}

#[test]
fn overlays_over_raw_and_qcow2_bases() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();

    // A raw base with data, written through RawFile.
    let raw_base = d.join("base.raw");
    let mut raw = RawFile::new(create(&raw_base), 3 * MIB).unwrap();
    raw.write_at(0, &[0x11; 4096]).unwrap();
    raw.write_at(3 * MIB - 5, b"tail!").unwrap();
    raw.finish().unwrap();

    // A qcow2 base written by us.
    let ours_base = d.join("ours-base.qcow2");
    let mut contents = SparseBuffer::new(2 * MIB);
    contents.write_at(MIB + 3, b"from our base").unwrap();
    write_data_image(&create(&ours_base), 2 * MIB, &contents).unwrap();

    // A qcow2 base written by qemu-img and qemu-io.
    let qemu_base = d.join("qemu-base.qcow2");
    qemu_img_create(&qemu_base, "4M");
    tool_ok("qemu-io", &["-c", "write -P 0xab 1M 64k", s(&qemu_base)]);

    let abs_qemu_base = qemu_base.to_str().unwrap().to_owned();
    let cases = [
        ("over-raw.qcow2", "base.raw".to_owned(), "raw", 8 * MIB),
        (
            "over-ours.qcow2",
            "ours-base.qcow2".to_owned(),
            "qcow2",
            2 * MIB,
        ),
        ("over-qemu.qcow2", abs_qemu_base.clone(), "qcow2", 64 * MIB),
    ];
    for (name, backing_name, format, size) in cases {
        let overlay = d.join(name);
        let base_path = d.join(&backing_name); // an absolute name replaces `d`
        let backing = Backing {
            path: backing_name.clone(),
            format: probe_format(&base_path).unwrap().backing_format(),
        };
        assert_eq!(backing.format.as_str(), format);
        write_overlay(&create(&overlay), size, &backing).unwrap();

        assert_check_clean(&overlay);
        let info = qemu_img_info(&overlay);
        assert_our_format(&info, size);
        assert_eq!(info["backing-filename"], backing_name.as_str());
        assert_eq!(info["backing-filename-format"], format);
        assert_eq!(info["full-backing-filename"], s(&base_path));

        let image = Qcow2Image::open(&overlay).unwrap();
        assert_eq!(image.backing_file(), Some(backing_name.as_str()));
        assert_eq!(image.backing_format(), Some(format));
        assert_reader_matches_qemu(&overlay);

        // QEMU can write into the overlay, and the result still checks clean.
        tool_ok("qemu-io", &["-c", "write -P 0x5a 1536k 8k", s(&overlay)]);
        assert_check_clean(&overlay);
        assert_reader_matches_qemu(&overlay);
    }
}

#[test]
fn grown_overlays_keep_their_data_and_check_clean() {
    let dir = TempDir::new().unwrap();
    let base = dir.path().join("base.raw");
    tool_ok("qemu-img", &["create", "-q", "-f", "raw", s(&base), "64M"]);
    tool_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 64k", s(&base)],
    );
    let overlay = dir.path().join("disk.qcow2");
    let backing = Backing {
        path: s(&base).to_owned(),
        format: BackingFormat::Raw,
    };
    write_overlay(&create(&overlay), 1 << 30, &backing).unwrap();
    // The guest wrote near the end of the old disk.
    tool_ok("qemu-io", &["-c", "write -P 0x22 1023M 64k", s(&overlay)]);

    let file = File::options()
        .read(true)
        .write(true)
        .open(&overlay)
        .unwrap();
    assert_eq!(grow(&file, 5 << 30).unwrap(), 1 << 30);
    drop(file);

    assert_check_clean(&overlay);
    let info = qemu_img_info(&overlay);
    assert_eq!(info["virtual-size"], 5u64 << 30);
    assert_eq!(info["full-backing-filename"], s(&base));
    for (pattern, at) in [
        ("0x11", "0"),
        ("0x22", "1023M"),
        ("0", "1G"),
        ("0", "5119M"),
    ] {
        tool_ok(
            "qemu-io",
            &["-c", &format!("read -P {pattern} {at} 64k"), s(&overlay)],
        );
    }
    // QEMU writes into the new part, and the image still checks clean.
    tool_ok("qemu-io", &["-c", "write -P 0x33 4G 64k", s(&overlay)]);
    tool_ok("qemu-io", &["-c", "read -P 0x33 4G 64k", s(&overlay)]);
    assert_check_clean(&overlay);
}

#[test]
fn invalid_writer_inputs_are_refused() {
    let dir = TempDir::new().unwrap();
    let file = create(&dir.path().join("x.qcow2"));
    for size in [0, 1000] {
        assert!(matches!(
            write_data_image(&file, size, &SparseBuffer::new(0)),
            Err(Qcow2Error::InvalidSize { .. })
        ));
    }
    assert!(matches!(
        write_data_image(&file, MIB, &SparseBuffer::new(MIB + 512)),
        Err(Qcow2Error::ContentsTooLarge { .. })
    ));
    for name in [String::new(), "a".repeat(1024), "a\0b".to_owned()] {
        let backing = Backing {
            path: name,
            format: BackingFormat::Raw,
        };
        assert!(matches!(
            write_overlay(&file, MIB, &backing),
            Err(Qcow2Error::InvalidBackingName(_))
        ));
    }
    // 1023 bytes is the limit, and the name still fits in cluster 0.
    let backing = Backing {
        path: "b".repeat(1023),
        format: BackingFormat::Raw,
    };
    write_overlay(&file, MIB, &backing).unwrap();
    let image = Qcow2Image::open(&dir.path().join("x.qcow2"));
    assert!(
        matches!(image, Err(Qcow2Error::Backing { .. })),
        "{image:?}"
    );
}

/// Writes images with qemu-io and checks our reader against `qemu-img convert`.
#[test]
fn reader_reads_images_written_by_qemu() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let writes = [
        "write -P 0xab 1M 64k",
        "write -P 0xcd 3M 4k",
        "write -P 0xee 2M 64k",
        "write -z 2M 64k", // a whole allocated cluster: the zero flag
        "write -P 0x01 4095k 2k",
    ];
    let commands: Vec<&str> = writes.iter().flat_map(|w| ["-c", *w]).collect();
    for (name, options) in [
        ("v3.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=0.10"),
        ("small-clusters.qcow2", "cluster_size=4096"),
        ("large-clusters.qcow2", "cluster_size=2M"),
        ("refcount-bits-1.qcow2", "refcount_bits=1"),
    ] {
        let path = d.join(name);
        qemu_img_create_with(&path, &["-o", options], Some("5M"));
        let mut args = commands.clone();
        args.push(s(&path));
        tool_ok("qemu-io", &args);
        assert_reader_matches_qemu(&path);
        let image = Qcow2Image::open(&path).unwrap();
        let expected_version = if name == "v2.qcow2" { 2 } else { 3 };
        assert_eq!(image.version(), expected_version);
        assert!(image.allocated_clusters().unwrap() >= 3);
    }

    // A chain: raw base <- qcow2 (smaller than the next) <- qcow2 overlay.
    let raw = d.join("chain-base.raw");
    tool_ok("qemu-img", &["create", "-q", "-f", "raw", s(&raw), "2M"]);
    tool_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 0 1M", s(&raw)],
    );
    let mid = d.join("chain-mid.qcow2");
    let top = d.join("chain-top.qcow2");
    let raw_abs = s(&raw).to_owned();
    qemu_img_create_with(&mid, &["-b", &raw_abs, "-F", "raw"], Some("3M"));
    tool_ok("qemu-io", &["-c", "write -P 0x88 512k 64k", s(&mid)]);
    qemu_img_create_with(&top, &["-b", "chain-mid.qcow2", "-F", "qcow2"], Some("6M"));
    tool_ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x99 0 4k",
            "-c",
            "write -z 520k 4k",
            s(&top),
        ],
    );
    assert_reader_matches_qemu(&mid);
    assert_reader_matches_qemu(&top);
    let image = Qcow2Image::open(&top).unwrap();
    assert_eq!(image.backing_file(), Some("chain-mid.qcow2"));
    assert_eq!(image.backing_format(), Some("qcow2"));

    // Compressed clusters and extended L2 entries are refused, not misread.
    let compressed = d.join("compressed.qcow2");
    let source = d.join("v3.qcow2");
    tool_ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&source), s(&compressed)],
    );
    let image = Qcow2Image::open(&compressed).unwrap();
    let err = image.read_at(MIB, &mut [0; 16]).unwrap_err();
    assert!(matches!(err, Qcow2Error::Unsupported(_)), "{err}");
    let extended = d.join("extended.qcow2");
    qemu_img_create_with(&extended, &["-o", "extended_l2=on"], Some("1M"));
    let err = Qcow2Image::open(&extended).unwrap_err();
    assert!(matches!(err, Qcow2Error::Unsupported(_)), "{err}");
}

/// One write of a property test: where (as a fraction of the size), how long, which byte.
fn write_strategy() -> impl Strategy<Value = (f64, usize, u8)> {
    (
        0.0..1.0f64,
        1usize..140_000,
        prop_oneof![Just(0u8), any::<u8>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_sparse_writes_match_a_raw_reference(
        sectors in 128u64..(3 << 21), // 64 KiB .. 3 GiB
        writes in prop::collection::vec(write_strategy(), 0..24),
    ) {
        let size = sectors * 512;
        let mut contents = SparseBuffer::new(size);
        for (at, len, byte) in writes {
            let len = len.min(size as usize);
            let offset = ((size - len as u64) as f64 * at) as u64;
            // Vary the bytes inside a write so misplaced data cannot go unnoticed.
            let data: Vec<u8> = (0..len)
                .map(|i| if byte == 0 { 0 } else { byte.wrapping_add((i / 512) as u8) | 1 })
                .collect();
            contents.write_at(offset, &data).unwrap();
        }
        let dir = TempDir::new().unwrap();
        let (qcow2, raw) = write_pair(dir.path(), size, &contents);
        assert_check_clean(&qcow2);
        assert_same_as_raw(&qcow2, &raw);

        let image = Qcow2Image::open(&qcow2).unwrap();
        for (offset, data) in contents.extents() {
            // Each extent with a cluster of margin on both sides.
            let start = offset.saturating_sub(65536);
            let end = (offset + data.len() as u64 + 65536).min(size);
            let mut ours = vec![0xAA; (end - start) as usize];
            let mut expected = vec![0; ours.len()];
            image.read_at(start, &mut ours).unwrap();
            contents.read_at(start, &mut expected);
            prop_assert!(ours == expected, "bytes around {} differ", offset);
        }
    }
}
