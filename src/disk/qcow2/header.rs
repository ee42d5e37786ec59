//! The qcow2 header (cluster 0) and its header extensions.
//!
//! Field names and meanings follow QEMU's `docs/interop/qcow2.txt`. Every field is big-endian.

use super::Qcow2Error;

/// `QFI\xfb`: the first four bytes of every qcow2 file.
pub const MAGIC: u32 = 0x5146_49fb;

/// Header extension type: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension type: backing file format name (`qcow2`, `raw`, ...).
pub const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

/// Incompatible feature bit 0: refcounts may be inconsistent (lazy refcounts in use).
/// Reading data is still correct, so the reader accepts it.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: QEMU found the metadata corrupt and stopped writing to it.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
/// Incompatible feature bit 3: the `compression_type` field is valid. Only compressed clusters
/// depend on it, and the reader refuses those anyway.
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Incompatible feature bit 4: L2 entries are 128 bits with subcluster bitmaps.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// The image header, version 2 or 3.
///
/// Version 2 headers end at byte 72; the v3-only fields then hold the values the spec assigns to
/// version 2 images (no feature bits, 16-bit refcounts, header length 72).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Version number (valid values are 2 and 3).
    pub version: u32,
    /// Offset into the image file at the start of the backing file name (not NUL-terminated),
    /// or 0 if the image has no backing file. Must lie in the first cluster.
    pub backing_file_offset: u64,
    /// Length of the backing file name in bytes; at most 1023.
    pub backing_file_size: u32,
    /// Number of bits used for addressing an offset within a cluster (`1 << cluster_bits` is
    /// the cluster size); QEMU supports 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 for no encryption, 1 for AES, 2 for LUKS.
    pub crypt_method: u32,
    /// Number of entries in the active L1 table.
    pub l1_size: u32,
    /// Offset into the image file at which the active L1 table starts; cluster-aligned.
    pub l1_table_offset: u64,
    /// Offset into the image file at which the refcount table starts; cluster-aligned.
    pub refcount_table_offset: u64,
    /// Number of clusters that the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of snapshots contained in the image.
    pub nb_snapshots: u32,
    /// Offset into the image file at which the snapshot table starts.
    pub snapshots_offset: u64,
    /// Feature bits an implementation must understand to open the image at all.
    pub incompatible_features: u64,
    /// Feature bits that may be ignored safely.
    pub compatible_features: u64,
    /// Feature bits an implementation that does not know them must clear when writing.
    pub autoclear_features: u64,
    /// Width of a refcount block entry is `1 << refcount_order` bits.
    pub refcount_order: u32,
    /// Length of the header structure in bytes; header extensions start right after it.
    pub header_length: u32,
    /// Compression method of compressed clusters (0 zlib, 1 zstd); only in headers of at least
    /// 105 bytes.
    pub compression_type: u8,
}

impl Header {
    /// Bytes of a version 2 header.
    pub const V2_SIZE: usize = 72;
    /// Bytes of a version 3 header without the `compression_type` field.
    pub const V3_MIN_SIZE: usize = 104;
    /// Bytes of the version 3 header this crate writes: with `compression_type` and 7 padding
    /// bytes, since the header length must be a multiple of 8.
    pub const SIZE: usize = 112;

    /// A version 3 header with no backing file, encryption or snapshots, 16-bit refcounts, zlib
    /// compression type and no feature bits: what the writer emits before filling in offsets.
    pub fn v3(cluster_bits: u32, size: u64) -> Self {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: Self::SIZE as u32,
            compression_type: 0,
        }
    }

    /// Encodes a version 3 header of [`Header::SIZE`] bytes.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        b[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
        b[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
        b[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
        b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
        b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
        b[104] = self.compression_type;
        b
    }

    /// Decodes a version 2 or 3 header from the start of `bytes`.
    ///
    /// Checks only what is needed to know where the header ends (magic, version, header
    /// length); the reader validates the rest against the file.
    pub fn decode(bytes: &[u8]) -> Result<Self, Qcow2Error> {
        if bytes.len() < 4 || be32(bytes, 0) != MAGIC {
            return Err(Qcow2Error::NotQcow2);
        }
        if bytes.len() < Self::V2_SIZE {
            return Err(Qcow2Error::Truncated("the header"));
        }
        let version = be32(bytes, 4);
        let mut h = Header {
            version,
            backing_file_offset: be64(bytes, 8),
            backing_file_size: be32(bytes, 16),
            cluster_bits: be32(bytes, 20),
            size: be64(bytes, 24),
            crypt_method: be32(bytes, 32),
            l1_size: be32(bytes, 36),
            l1_table_offset: be64(bytes, 40),
            refcount_table_offset: be64(bytes, 48),
            refcount_table_clusters: be32(bytes, 56),
            nb_snapshots: be32(bytes, 60),
            snapshots_offset: be64(bytes, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: Self::V2_SIZE as u32,
            compression_type: 0,
        };
        match version {
            2 => Ok(h),
            3 => {
                if bytes.len() < Self::V3_MIN_SIZE {
                    return Err(Qcow2Error::Truncated("the version 3 header"));
                }
                h.incompatible_features = be64(bytes, 72);
                h.compatible_features = be64(bytes, 80);
                h.autoclear_features = be64(bytes, 88);
                h.refcount_order = be32(bytes, 96);
                h.header_length = be32(bytes, 100);
                let len = h.header_length as usize;
                if len < Self::V3_MIN_SIZE || !len.is_multiple_of(8) {
                    return Err(Qcow2Error::Corrupt(format!(
                        "header length {len} is not a multiple of 8 of at least {}",
                        Self::V3_MIN_SIZE
                    )));
                }
                if len > Self::V3_MIN_SIZE {
                    h.compression_type = *bytes
                        .get(Self::V3_MIN_SIZE)
                        .ok_or(Qcow2Error::Truncated("the version 3 header"))?;
                }
                Ok(h)
            }
            v => Err(Qcow2Error::UnsupportedVersion(v)),
        }
    }

    /// The cluster size in bytes. Meaningful once `cluster_bits` has been validated.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
}

/// One header extension: `{u32 type, u32 length, data, zero padding to a multiple of 8}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderExtension<'a> {
    /// The extension type (e.g. [`EXT_BACKING_FORMAT`]).
    pub kind: u32,
    /// The extension's data, without padding.
    pub data: &'a [u8],
}

impl HeaderExtension<'_> {
    /// Bytes the extension occupies, padding included.
    pub fn encoded_len(&self) -> usize {
        8 + self.data.len().next_multiple_of(8)
    }

    /// Appends the encoded extension to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(self.data);
        out.resize(
            out.len() + (self.data.len().next_multiple_of(8) - self.data.len()),
            0,
        );
    }

    /// Decodes the extensions in `area` (the bytes after the header), stopping at the end marker
    /// or at the end of `area`. An extension that does not fit in `area` is an error.
    pub fn decode_all(area: &[u8]) -> Result<Vec<HeaderExtension<'_>>, Qcow2Error> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while area.len() - at >= 8 {
            let kind = be32(area, at);
            let len = be32(area, at + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let data = area
                .get(at + 8..)
                .and_then(|rest| rest.get(..len))
                .ok_or(Qcow2Error::Truncated("a header extension"))?;
            out.push(HeaderExtension { kind, data });
            // `len` fits in `area`, so this cannot overflow; padding may run past the end only
            // for the last extension, and then the loop stops.
            at = (at + 8 + len.next_multiple_of(8)).min(area.len());
        }
        Ok(out)
    }
}

/// Reads a big-endian u32 at `at`; the caller guarantees `at + 4 <= b.len()`.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a big-endian u64 at `at`; the caller guarantees `at + 8 <= b.len()`.
pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            backing_file_offset: 0x98,
            backing_file_size: 8,
            l1_size: 20,
            l1_table_offset: 0x2_0000,
            refcount_table_offset: 0x1_0000,
            refcount_table_clusters: 1,
            ..Header::v3(16, 10 << 30)
        }
    }

    #[test]
    fn v3_header_golden_bytes() {
        #[rustfmt::skip]
        let expected: [u8; Header::SIZE] = [
            0x51, 0x46, 0x49, 0xfb, // magic "QFI\xfb"
            0, 0, 0, 3, // version
            0, 0, 0, 0, 0, 0, 0, 0x98, // backing_file_offset
            0, 0, 0, 8, // backing_file_size
            0, 0, 0, 16, // cluster_bits
            0, 0, 0, 2, 0x80, 0, 0, 0, // size = 10 GiB
            0, 0, 0, 0, // crypt_method
            0, 0, 0, 20, // l1_size
            0, 0, 0, 0, 0, 2, 0, 0, // l1_table_offset
            0, 0, 0, 0, 0, 1, 0, 0, // refcount_table_offset
            0, 0, 0, 1, // refcount_table_clusters
            0, 0, 0, 0, // nb_snapshots
            0, 0, 0, 0, 0, 0, 0, 0, // snapshots_offset
            0, 0, 0, 0, 0, 0, 0, 0, // incompatible_features
            0, 0, 0, 0, 0, 0, 0, 0, // compatible_features
            0, 0, 0, 0, 0, 0, 0, 0, // autoclear_features
            0, 0, 0, 4, // refcount_order
            0, 0, 0, 112, // header_length
            0, // compression_type = zlib
            0, 0, 0, 0, 0, 0, 0, // padding
        ];
        assert_eq!(sample().encode(), expected);
        assert_eq!(Header::decode(&expected).unwrap(), sample());
    }

    #[test]
    fn v2_header_decodes_with_v2_defaults() {
        let mut bytes = sample().encode()[..Header::V2_SIZE].to_vec();
        bytes[7] = 2;
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.header_length, 72);
        assert_eq!(h.refcount_order, 4);
        assert_eq!(h.incompatible_features, 0);
        assert_eq!(h.l1_size, 20);
    }

    #[test]
    fn bad_magic_version_and_length_are_refused() {
        let good = sample().encode();
        assert!(matches!(Header::decode(b"QFI"), Err(Qcow2Error::NotQcow2)));
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(Qcow2Error::NotQcow2)));
        let mut b = good;
        b[7] = 4;
        assert!(matches!(
            Header::decode(&b),
            Err(Qcow2Error::UnsupportedVersion(4))
        ));
        assert!(matches!(
            Header::decode(&good[..50]),
            Err(Qcow2Error::Truncated(_))
        ));
        assert!(matches!(
            Header::decode(&good[..80]),
            Err(Qcow2Error::Truncated(_))
        ));
        // header_length 112 but only 104 bytes available.
        assert!(matches!(
            Header::decode(&good[..104]),
            Err(Qcow2Error::Truncated(_))
        ));
        let mut b = good;
        b[103] = 100;
        assert!(matches!(Header::decode(&b), Err(Qcow2Error::Corrupt(_))));
    }

    #[test]
    fn extension_golden_bytes_and_round_trip() {
        let ext = HeaderExtension {
            kind: EXT_BACKING_FORMAT,
            data: b"qcow2",
        };
        let mut out = Vec::new();
        ext.encode_into(&mut out);
        assert_eq!(
            out,
            [
                0xE2, 0x79, 0x2A, 0xCA, 0, 0, 0, 5, b'q', b'c', b'o', b'w', b'2', 0, 0, 0
            ]
        );
        assert_eq!(ext.encoded_len(), out.len());
        out.extend_from_slice(&[0; 8]); // end marker
        out.extend_from_slice(b"trailing backing name");
        assert_eq!(HeaderExtension::decode_all(&out).unwrap(), vec![ext]);
    }

    #[test]
    fn extension_longer_than_its_area_is_refused() {
        let area = [0xE2, 0x79, 0x2A, 0xCA, 0, 0, 0x10, 0, b'r', b'a', b'w', 0];
        assert!(matches!(
            HeaderExtension::decode_all(&area),
            Err(Qcow2Error::Truncated(_))
        ));
    }
}
