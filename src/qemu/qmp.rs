//! A minimal client for the QEMU Machine Protocol over a unix socket.
//!
//! QMP is one JSON object per line. On connect QEMU sends a greeting (`{"QMP": …}`) and
//! accepts only `qmp_capabilities` until that has been sent; after that every command gets
//! exactly one `{"return": …}` or `{"error": {"class", "desc"}}`, while asynchronous
//! `{"event": …}` messages may arrive at any time and are skipped here. Each command carries
//! an `id` that QEMU echoes, so a reply is never taken for another command's.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// The longest line accepted from QEMU; replies we ask for are far smaller.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path:?}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("malformed QMP message: {0}")]
    Malformed(String),
    #[error("QMP command {command} failed: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One message from QEMU, as far as this client cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Greeting(Value),
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event {
        name: String,
    },
}

/// Classifies one line received from QEMU.
pub fn parse_message(line: &str) -> Result<Message, QmpError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| QmpError::Malformed(format!("{e}: {line}")))?;
    let Value::Object(mut obj) = value else {
        return Err(QmpError::Malformed(format!("not an object: {line}")));
    };
    let id = obj.remove("id");
    if let Some(greeting) = obj.remove("QMP") {
        return Ok(Message::Greeting(greeting));
    }
    if let Some(value) = obj.remove("return") {
        return Ok(Message::Return { id, value });
    }
    if let Some(error) = obj.remove("error") {
        let field = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned()
        };
        return Ok(Message::Error {
            id,
            class: field("class"),
            desc: field("desc"),
        });
    }
    if let Some(Value::String(name)) = obj.remove("event") {
        return Ok(Message::Event { name });
    }
    Err(QmpError::Malformed(format!("unknown message: {line}")))
}

/// A QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// Bounds each command as a whole, events included.
    timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation. `timeout` bounds each
    /// read, write and command, so a wedged QEMU cannot hang the caller.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
            timeout,
        };
        match qmp.read_message()? {
            Message::Greeting(_) => {}
            other => {
                return Err(QmpError::Malformed(format!(
                    "expected greeting, got {other:?}"
                )));
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value; a QMP error becomes
    /// [`QmpError::Command`] carrying QEMU's `desc`.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = Map::new();
        request.insert("execute".into(), json!(command));
        if let Some(arguments) = arguments {
            request.insert("arguments".into(), arguments);
        }
        request.insert("id".into(), json!(id));
        let mut line = Value::Object(request).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if Instant::now() > deadline {
                return Err(QmpError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply to {command} within {:?}", self.timeout),
                )));
            }
            match self.read_message()? {
                Message::Event { .. } | Message::Greeting(_) => continue,
                Message::Return { id: got, value } if got == Some(json!(id)) => return Ok(value),
                Message::Error {
                    id: got,
                    class,
                    desc,
                } if got == Some(json!(id)) => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    });
                }
                // A reply to an earlier command whose reader gave up: not ours.
                Message::Return { .. } | Message::Error { .. } => continue,
            }
        }
    }

    /// `query-status`'s `status` field: `running`, `paused`, `shutdown`, …
    pub fn query_status(&mut self) -> Result<String, QmpError> {
        let value = self.execute("query-status", None)?;
        value
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Malformed(format!("query-status returned {value}")))
    }

    fn read_message(&mut self) -> Result<Message, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader).take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if !line.ends_with('\n') && n as u64 == MAX_LINE {
            return Err(QmpError::Malformed("message longer than 1 MiB".into()));
        }
        parse_message(line.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_each_kind() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}}, "capabilities": ["oob"]}}"#;
        assert!(matches!(parse_message(greeting), Ok(Message::Greeting(_))));
        assert_eq!(
            parse_message(r#"{"return": {"status": "running", "running": true}, "id": 3}"#)
                .unwrap(),
            Message::Return {
                id: Some(json!(3)),
                value: json!({"status": "running", "running": true})
            }
        );
        assert_eq!(
            parse_message(r#"{"id": 4, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#).unwrap(),
            Message::Error {
                id: Some(json!(4)),
                class: "CommandNotFound".into(),
                desc: "The command nope has not been found".into()
            }
        );
        assert_eq!(
            parse_message(
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#
            )
            .unwrap(),
            Message::Event {
                name: "POWERDOWN".into()
            }
        );
        assert!(matches!(parse_message("[1]"), Err(QmpError::Malformed(_))));
        assert!(matches!(
            parse_message("{\"x\": 1}"),
            Err(QmpError::Malformed(_))
        ));
        assert!(matches!(
            parse_message("{nope"),
            Err(QmpError::Malformed(_))
        ));
    }

    /// A scripted QEMU: checks what the client sends and answers with events interleaved.
    #[test]
    fn session_skips_events_and_reports_desc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            let mut got = Vec::new();
            writeln!(out, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let replies = [
                r#"{"return": {}, "id": 1}"#,
                concat!(
                    r#"{"event": "RESUME", "timestamp": {}}"#,
                    "\n",
                    r#"{"return": {"status": "running", "running": true}, "id": 2}"#
                ),
                r#"{"error": {"class": "GenericError", "desc": "nope is not a command"}, "id": 3}"#,
            ];
            for reply in replies {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                got.push(serde_json::from_str::<Value>(&line).unwrap());
                writeln!(out, "{reply}").unwrap();
            }
            got
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.query_status().unwrap(), "running");
        let err = qmp.execute("nope", Some(json!({"a": 1}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command nope failed: nope is not a command (GenericError)"
        );
        let sent = server.join().unwrap();
        assert_eq!(sent[0], json!({"execute": "qmp_capabilities", "id": 1}));
        assert_eq!(sent[1], json!({"execute": "query-status", "id": 2}));
        assert_eq!(
            sent[2],
            json!({"execute": "nope", "arguments": {"a": 1}, "id": 3})
        );
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let err = Qmp::connect(&path, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, QmpError::Io(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
