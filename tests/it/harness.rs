//! What the integration tests share.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Held by every test that starts `qemu-system-x86_64`: the guests run under TCG on shared
/// CPUs, so one at a time.
static QEMU: Mutex<()> = Mutex::new(());

/// Takes the QEMU lock for the rest of the test.
pub fn one_qemu_at_a_time() -> MutexGuard<'static, ()> {
    QEMU.lock().unwrap_or_else(PoisonError::into_inner)
}
