//! Plan and apply: from the validated model to volumes, seeds, overlays and running VMs.
