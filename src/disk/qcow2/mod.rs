//! qcow2 version 3 images: a writer for data images and copy-on-write overlays, and a reader.
