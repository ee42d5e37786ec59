//! Standard output, where commands print their results.
//!
//! `println!` panics when stdout is gone: `qemu-compose config | head -1` ended with exit 101
//! once the output outgrew the pipe buffer. Writes through [`Stdout`] return the error
//! instead, marked as a write to standard output, so it travels up like any other error and
//! `main` can tell the reader going away ([`reader_gone`]: end quietly with status 0, as
//! ripgrep does) from a real failure (`> /dev/full`: reported, status 1). A broken pipe
//! anywhere else (a QMP socket, ssh) stays an error.
//!
//! Progress, warnings and errors go to stderr through [`note!`], which never fails: with
//! stderr closed (`qemu-compose up 2>&1 | head -1`) they are lost, but the command goes on
//! instead of panicking halfway, as `eprintln!` would.

use std::io::{self, Write};

use qemu_compose::engine::volume_io::ImportSummary;
use serde::Serialize;

/// Standard output whose write errors are marked as [`StdoutError`].
#[derive(Debug)]
pub struct Stdout(io::Stdout);

/// Standard output for a command's results.
pub fn stdout() -> Stdout {
    Stdout(io::stdout())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// A write to standard output failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct StdoutError(io::Error);

/// The same error, of the same kind, marked as coming from standard output.
fn mark(err: io::Error) -> io::Error {
    io::Error::new(err.kind(), StdoutError(err))
}

/// `eprintln!` that ignores a closed or failing stderr.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// A table as docker prints them: no borders, columns three spaces apart, the first one at
/// the left margin (print it with `trim_fmt`, which drops trailing blanks).
pub fn table<'a>(header: impl IntoIterator<Item = &'a str>) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.into_iter().collect::<Vec<_>>());
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
}

/// "2 files (1.05 MiB), 1 folder, 0 symbolic links": what an import or export carried.
pub fn tree_counts(s: &ImportSummary) -> String {
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{} ({}), {}, {}",
        count(s.files, "file", "files"),
        indicatif::HumanBytes(s.data_bytes),
        count(s.dirs, "folder", "folders"),
        count(s.symlinks, "symbolic link", "symbolic links")
    )
}

/// Prints `value` as indented JSON and a newline.
pub fn json(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Whether `err` is standard output's reader having gone away (`EPIPE`): the command has
/// nobody left to tell anything, so it ends quietly.
pub fn reader_gone(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|io| {
            io.kind() == io::ErrorKind::BrokenPipe
                && io.get_ref().is_some_and(|inner| inner.is::<StdoutError>())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn only_a_broken_stdout_means_the_reader_is_gone() {
        let closed = || mark(io::ErrorKind::BrokenPipe.into());
        assert!(reader_gone(&closed().into()));
        let wrapped = Err::<(), _>(closed()).context("printing the table");
        assert!(reader_gone(&wrapped.unwrap_err()));
        // A full disk behind `>` is a failure to report; so is a broken socket.
        assert!(!reader_gone(&mark(io::Error::from_raw_os_error(28)).into()));
        let socket = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(!reader_gone(&socket.into()));
    }

    #[test]
    fn the_message_says_what_failed() {
        let err = mark(io::Error::from_raw_os_error(28));
        assert_eq!(
            err.to_string(),
            "cannot write to standard output: No space left on device (os error 28)"
        );
    }
}
