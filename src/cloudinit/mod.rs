//! The cloud-init NoCloud documents: typed user-data, meta-data and network-config.
