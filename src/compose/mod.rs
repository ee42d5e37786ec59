//! The compose file: discovery, interpolation, strict serde types and the validated model.
