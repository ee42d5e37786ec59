//! The one environment policy of every test that runs `qemu-compose`, shared by `tests/it` and
//! `tests/e2e.rs` (included with `#[path]`: neither is a library the other can depend on).

use std::process::Command;

/// Variables of the developer's shell that change what the binary does, besides every
/// `QEMU_COMPOSE_*` one: the socket folder, proxies (the tests serve images on 127.0.0.1), and
/// the terminal size that help and tables would wrap to.
const UNSET: &[&str] = &[
    "XDG_RUNTIME_DIR",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "COLUMNS",
    "LINES",
];

/// Removes from `cmd`'s environment every `QEMU_COMPOSE_*` variable and everything of
/// [`UNSET`]; `HOME` and `XDG_STATE_HOME` are kept, so the test and the binary find the same
/// private folders. A test that needs a variable sets it on the command afterwards.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"QEMU_COMPOSE_") {
            cmd.env_remove(&key);
        }
    }
    for key in UNSET {
        cmd.env_remove(key);
    }
    cmd
}
