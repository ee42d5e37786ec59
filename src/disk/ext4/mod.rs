//! A pure-Rust mkfs.ext4: plans the layout of a fresh filesystem, then writes only its non-zero metadata.
