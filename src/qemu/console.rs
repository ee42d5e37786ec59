//! Relaying a terminal to a VM's serial console socket.
//!
//! QEMU serves the guest's serial port on a unix socket (and copies it to the log). When the
//! user's stdin is a terminal it goes into raw mode, so every key, Ctrl+C included, reaches
//! the guest as a byte; only Ctrl+] (0x1d, as in telnet) is kept back and detaches. Raw mode
//! is undone by a guard's `Drop`, so every way out of [`attach`] — detach, the VM closing the
//! socket, an I/O error, a panic unwinding — restores the terminal. Keyboard signals cannot
//! arrive meanwhile because raw mode turns ISIG off.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rustix::termios::{self, OptionalActions, Termios};
use signal_hook::consts::{SIGHUP, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

/// The byte Ctrl+] sends.
pub const DETACH_BYTE: u8 = 0x1d;

/// How long output is still relayed after stdin ends without a terminal: the guest's answer
/// to the last input usually follows within milliseconds.
const DRAIN_AFTER_EOF: Duration = Duration::from_millis(500);

/// Why [`attach`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The user pressed Ctrl+].
    Detached,
    /// QEMU closed the socket (the VM stopped).
    VmClosed,
    /// Stdin ended (only without a terminal).
    InputClosed,
    /// SIGTERM, SIGHUP or SIGQUIT arrived (only with a terminal, which is restored first).
    Signalled(i32),
}

/// Why the console could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The serial socket does not accept connections.
    #[error("cannot connect to the serial console {}: {source}", .path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The terminal mode could not be read or set.
    #[error("cannot put the terminal in raw mode: {0}")]
    Terminal(io::Error),
    /// Relaying failed.
    #[error("console relay failed: {0}")]
    Io(#[from] io::Error),
}

/// Raw mode on a terminal for as long as the guard lives.
#[derive(Debug)]
pub struct RawMode<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawMode<'fd> {
    /// Puts the terminal `fd` in raw mode, keeping its settings to restore.
    pub fn enter(fd: BorrowedFd<'fd>) -> io::Result<Self> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw)?;
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        // Nothing better can be done with an error here: the terminal is going away.
        let _ = termios::tcsetattr(self.fd, OptionalActions::Now, &self.saved);
    }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: impl AsFd) -> bool {
    termios::isatty(fd)
}

/// Connects to the serial socket at `socket` and relays stdin to it and it to `output` (the
/// caller's stdout) until the user detaches, the VM closes the socket, or (without a terminal)
/// stdin ends. `on_ready` runs once connected, before raw mode, to print the hint line. The
/// terminal is restored before this returns.
pub fn attach(
    socket: &Path,
    output: impl Write + Send + 'static,
    on_ready: impl FnOnce(),
) -> Result<ConsoleEnd, ConsoleError> {
    let stream = UnixStream::connect(socket).map_err(|source| ConsoleError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    on_ready();
    let stdin = io::stdin();
    let terminal = is_terminal(stdin.as_fd());
    let _raw = if terminal {
        Some(RawMode::enter(stdin.as_fd()).map_err(ConsoleError::Terminal)?)
    } else {
        None
    };
    relay(stream, io::stdin(), output, terminal)
}

/// Message of a relay thread to the one that waits.
enum Event {
    End(ConsoleEnd),
    Failed(io::Error),
}

/// The relay itself: one thread per direction; the first to finish decides. The input thread
/// may stay blocked in `read` after the end; it ends with the process.
fn relay(
    stream: UnixStream,
    mut input: impl Read + Send + 'static,
    mut output: impl Write + Send + 'static,
    detach_on_ctrl_bracket: bool,
) -> Result<ConsoleEnd, ConsoleError> {
    let (tx, rx) = mpsc::channel();
    // In raw mode a signal from outside must not kill the process before the terminal is
    // restored: turn it into an end of the relay instead (Ctrl+C is just a byte here).
    let signals = if detach_on_ctrl_bracket {
        let mut signals = Signals::new([SIGTERM, SIGHUP, SIGQUIT])?;
        let handle = signals.handle();
        let sig_tx = tx.clone();
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = sig_tx.send(Event::End(ConsoleEnd::Signalled(sig)));
            }
        });
        Some(handle)
    } else {
        None
    };
    let mut from_vm = stream.try_clone()?;
    let mut to_vm = stream;
    let out_tx = tx.clone();
    let output_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let event = loop {
            match from_vm.read(&mut buf) {
                Ok(0) => break Event::End(ConsoleEnd::VmClosed),
                Ok(n) => {
                    if let Err(e) = output.write_all(&buf[..n]).and_then(|()| output.flush()) {
                        break Event::Failed(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Event::Failed(e),
            }
        };
        let _ = out_tx.send(event);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let event = loop {
            match input.read(&mut buf) {
                Ok(0) => break Event::End(ConsoleEnd::InputClosed),
                Ok(n) => {
                    let chunk = &buf[..n];
                    let detach = detach_on_ctrl_bracket
                        .then(|| chunk.iter().position(|b| *b == DETACH_BYTE))
                        .flatten();
                    let send = &chunk[..detach.unwrap_or(n)];
                    if let Err(e) = to_vm.write_all(send) {
                        break Event::Failed(e);
                    }
                    if detach.is_some() {
                        break Event::End(ConsoleEnd::Detached);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Event::Failed(e),
            }
        };
        let _ = tx.send(event);
    });
    let first = rx.recv().unwrap_or(Event::End(ConsoleEnd::VmClosed));
    if let Some(handle) = signals {
        handle.close();
    }
    let end = match first {
        Event::End(ConsoleEnd::InputClosed) => {
            // Let the guest's answer to the last input through before leaving.
            match rx.recv_timeout(DRAIN_AFTER_EOF) {
                Ok(Event::Failed(e)) => return Err(e.into()),
                _ => ConsoleEnd::InputClosed,
            }
        }
        Event::End(end) => end,
        Event::Failed(e) => return Err(e.into()),
    };
    if end == ConsoleEnd::VmClosed {
        // All output has been written; nothing is left to wait for.
        let _ = output_thread.join();
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back after the relay thread is done with it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn ctrl_bracket_detaches_and_is_not_sent() {
        let (ours, mut vm) = pair();
        let input = io::Cursor::new(b"ls\r\x1dignored".to_vec());
        let end = relay(ours, input, Shared::default(), true).unwrap();
        assert_eq!(end, ConsoleEnd::Detached);
        vm.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = [0u8; 3];
        vm.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ls\r");
    }

    #[test]
    fn without_a_terminal_the_bracket_byte_passes_and_eof_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 3];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
            // Keep the socket open: the relay must end on stdin EOF, not on ours.
            std::thread::sleep(Duration::from_secs(1));
        });
        let stream = UnixStream::connect(&path).unwrap();
        let out = Shared::default();
        let end = relay(
            stream,
            io::Cursor::new(b"a\x1db".to_vec()),
            out.clone(),
            false,
        )
        .unwrap();
        assert_eq!(end, ConsoleEnd::InputClosed);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"a\x1db");
        echo.join().unwrap();
    }

    #[test]
    fn the_vm_closing_the_socket_ends_the_relay_after_its_output() {
        let (ours, mut vm) = pair();
        vm.write_all(b"bye\r\n").unwrap();
        drop(vm);
        let out = Shared::default();
        // An input that never ends, like an idle terminal.
        let (_keep, idle) = pair();
        let end = relay(ours, idle, out.clone(), true).unwrap();
        assert_eq!(end, ConsoleEnd::VmClosed);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"bye\r\n");
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let err = attach(Path::new("/nonexistent/serial.sock"), io::sink(), || {}).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/serial.sock"));
    }
}
