//! `logs [VM…] [-f] [--tail N]`: the serial console logs QEMU appends to.
//!
//! With several VMs each line gets a `name | ` prefix; `-f` keeps polling the files while a
//! VM runs (a log that does not exist yet is picked up when QEMU creates it, one that shrinks
//! — the instance was destroyed and made again — is read from its start) and ends when none
//! does, as `docker compose logs -f` does.
//!
//! The log is what the guest wrote, and a guest can write escape sequences that set the
//! terminal's title, colours or clipboard. Control characters are therefore shown as `^[`,
//! `^M`… (as `cat -v` does) unless `--raw`; the guest's CR LF line ends become LF.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use qemu_compose::engine::Workspace;

use super::output::note;
use super::{GlobalArgs, LogsArgs, output, project};

/// How often `-f` looks for new output.
const POLL: Duration = Duration::from_millis(200);
/// How much `--tail` reads at a time while it looks backwards for line starts.
const TAIL_BLOCK: u64 = 64 * 1024;

pub fn run(global: &GlobalArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let vms = project::selected(&project, &args.vms)?;
    let host = project::host(global)?;
    let workspace = Workspace::new(&project, &host);
    let width = vms.iter().map(|vm| vm.name.len()).max().unwrap_or(0);
    let mut logs: Vec<Log> = vms
        .iter()
        .map(|vm| {
            let prefix = if vms.len() > 1 {
                format!("{:width$} | ", vm.name)
            } else {
                String::new()
            };
            let mut log = Log::new(&prefix, workspace.serial_log(&vm.name));
            log.raw = args.raw;
            log
        })
        .collect();
    let mut out = output::stdout();
    for (log, vm) in logs.iter_mut().zip(&vms) {
        if !log.path.exists() && !workspace.is_created(&vm.name) {
            note!(
                "VM {} has no console log: it was never created (`qemu-compose up {}`)",
                vm.name,
                vm.name
            );
        } else if !log.path.exists() {
            note!(
                "VM {} has no console log yet (it has not been started)",
                vm.name
            );
        } else if !args.follow && log.path.metadata().is_ok_and(|m| m.len() == 0) {
            note!("VM {}'s console log is empty", vm.name);
        }
        if let Some(n) = args.tail
            && let Ok(mut file) = File::open(&log.path)
        {
            log.offset = tail_start(&mut file, n)?;
        }
        log.pump(&mut out)?;
        if !args.follow {
            log.finish(&mut out)?;
        }
    }
    out.flush()?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let running =
        |vms: &[&qemu_compose::compose::Vm]| vms.iter().any(|vm| workspace.is_running(&vm.name));
    while running(&vms) {
        std::thread::sleep(POLL);
        for log in &mut logs {
            if !log.pump(&mut out)? {
                log.flush_idle(&mut out)?;
            }
        }
        out.flush()?;
    }
    // What the VMs wrote while they stopped.
    for log in &mut logs {
        log.pump(&mut out)?;
        log.finish(&mut out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One VM's log and how far it has been printed.
struct Log {
    prefix: Vec<u8>,
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end has not been written yet (only kept with a prefix).
    partial: Vec<u8>,
    /// Whether the output (without a prefix) ends at the start of a line.
    at_line_start: bool,
    /// Pass control characters through (`--raw`).
    raw: bool,
    /// A CR that ended the last chunk: the start of a CR LF, or a CR of its own.
    pending_cr: bool,
}

impl Log {
    /// A log printed from its start, each line led by `prefix` (none when empty).
    fn new(prefix: &str, path: PathBuf) -> Self {
        Self {
            prefix: prefix.as_bytes().to_vec(),
            path,
            offset: 0,
            partial: Vec::new(),
            at_line_start: true,
            raw: false,
            pending_cr: false,
        }
    }

    /// Prints what the file gained since the last call; false when it gained nothing.
    fn pump(&mut self, out: &mut impl Write) -> io::Result<bool> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut gained = false;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(gained);
            }
            gained = true;
            self.offset += n as u64;
            self.write(out, &buf[..n])?;
        }
    }

    fn write(&mut self, out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
        let visible;
        let bytes = if self.raw {
            bytes
        } else {
            visible = self.visible(bytes);
            &visible
        };
        if self.prefix.is_empty() {
            if let Some(last) = bytes.last() {
                self.at_line_start = *last == b'\n';
            }
            return out.write_all(bytes);
        }
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            self.partial.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                out.write_all(&self.prefix)?;
                out.write_all(&self.partial)?;
                self.partial.clear();
            }
        }
        Ok(())
    }

    /// `bytes` with CR LF as LF and every other control character but TAB shown as `^X`
    /// (DEL as `^?`), so nothing the guest wrote acts on the terminal.
    fn visible(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if std::mem::take(&mut self.pending_cr) && b != b'\n' {
                out.extend_from_slice(b"^M");
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' | b'\t' => out.push(b),
                0..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
                0x7f => out.extend_from_slice(b"^?"),
                _ => out.push(b),
            }
        }
        out
    }

    /// With a prefix, shows a line the VM has stopped writing for now (a `login: ` prompt)
    /// on a line of its own; what follows it later gets a new prefix.
    fn flush_idle(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.partial.is_empty() {
            out.write_all(&self.prefix)?;
            out.write_all(&self.partial)?;
            out.write_all(b"\n")?;
            self.partial.clear();
        }
        Ok(())
    }

    /// Ends the last line, which the VM may not have finished, so the shell prompt that
    /// follows starts on a line of its own.
    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.flush_idle(out)?;
        if !self.at_line_start {
            out.write_all(b"\n")?;
            self.at_line_start = true;
        }
        Ok(())
    }
}

/// The offset where the last `lines` lines of `file` begin. A final line without a newline
/// counts as a line. Reads backwards a block at a time, so a huge log costs little.
fn tail_start(file: &mut (impl Read + Seek), lines: usize) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut newlines = 0;
    let mut buf = vec![0u8; TAIL_BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(TAIL_BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            let pos = start + i as u64;
            // The newline that ends the file's last line does not start a line.
            if *b == b'\n' && pos + 1 != len {
                newlines += 1;
                if newlines == lines {
                    return Ok(pos + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn tail(text: &str, n: usize) -> &str {
        let start = tail_start(&mut Cursor::new(text.as_bytes()), n).unwrap();
        &text[start as usize..]
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\nc\n", 9), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 0), "");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn tail_crosses_block_boundaries() {
        let line = format!("{}\n", "x".repeat(1000));
        let text = line.repeat(200);
        assert_eq!(tail(&text, 150).len(), 150 * line.len());
    }

    #[test]
    fn prefixed_lines_wait_for_their_end() {
        let mut log = Log::new("db | ", PathBuf::new());
        let mut out = Vec::new();
        log.write(&mut out, b"one\ntw").unwrap();
        log.write(&mut out, b"o\nthr").unwrap();
        log.finish(&mut out).unwrap();
        assert_eq!(out, b"db | one\ndb | two\ndb | thr\n");
    }

    #[test]
    fn control_characters_are_shown_not_acted_on() {
        let mut log = Log::new("", PathBuf::new());
        let mut out = Vec::new();
        log.write(&mut out, b"\x1b[0;32mOK\x1b[0m\r").unwrap();
        log.write(&mut out, b"\nbell\x07\tx\rover\x7f\r\n\xc3\xa9\n")
            .unwrap();
        assert_eq!(out, b"^[[0;32mOK^[[0m\nbell^G\tx^Mover^?\n\xc3\xa9\n");
        let mut raw = Log::new("", PathBuf::new());
        raw.raw = true;
        let mut out = Vec::new();
        raw.write(&mut out, b"\x1b]0;title\x07\r\n").unwrap();
        assert_eq!(out, b"\x1b]0;title\x07\r\n");
    }

    #[test]
    fn an_idle_prompt_shows_without_a_prefix_in_the_middle() {
        let mut log = Log::new("db | ", PathBuf::new());
        let mut out = Vec::new();
        log.write(&mut out, b"login: ").unwrap();
        log.flush_idle(&mut out).unwrap();
        log.flush_idle(&mut out).unwrap();
        log.write(&mut out, b"root\n").unwrap();
        assert_eq!(out, b"db | login: \ndb | root\n");
    }
}
