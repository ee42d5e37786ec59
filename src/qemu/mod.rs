//! QEMU: guest architectures, acceleration choice, the argv builder, the process and its QMP socket.

pub mod accel;
pub mod arch;
pub mod argv;
pub mod console;
pub mod ports;
pub mod process;
pub mod qmp;

pub use accel::{Accel, AccelChoice, AccelMode};
pub use arch::Arch;
pub use argv::{LaunchSpec, build_argv};
pub use process::{StopOutcome, VmHandle};
