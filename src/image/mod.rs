//! The image cache: downloads, checksums and format detection.
