//! The FAT image labelled CIDATA that carries the cloud-init NoCloud seed.
