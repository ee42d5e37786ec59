//! Progress of long byte-counted work (a download, writing a large volume): the interface it
//! reports through, and plain lines for logs and CI (the bar on a terminal is the CLI's,
//! `cli::progress`).

use std::io::Write;

use indicatif::HumanBytes;

/// Receives the progress of one piece of work.
pub trait Progress {
    /// `what` says what is done ("pulling debian.qcow2"); `total` is the byte count when known.
    fn start(&mut self, what: &str, total: Option<u64>);
    /// `done` bytes have been received so far.
    fn advance(&mut self, done: u64);
    /// The work ended, successfully or not.
    fn finish(&mut self, ok: bool);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self, _: bool) {}
}

/// One line per tenth of the work (or per 100 MiB when the size is unknown).
#[derive(Debug)]
pub struct LineProgress<W: Write> {
    out: W,
    what: String,
    total: Option<u64>,
    /// The step already reported: tenths, or 100 MiB units.
    reported: u64,
    done: u64,
}

const UNKNOWN_SIZE_STEP: u64 = 100 << 20;

impl<W: Write> LineProgress<W> {
    pub fn new(out: W) -> Self {
        LineProgress {
            out,
            what: String::new(),
            total: None,
            reported: 0,
            done: 0,
        }
    }

    /// The writer, for tests.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Progress for LineProgress<W> {
    fn start(&mut self, what: &str, total: Option<u64>) {
        self.what = what.to_owned();
        self.total = total;
        self.reported = 0;
        self.done = 0;
        let size = total.map_or("size unknown".to_owned(), |t| HumanBytes(t).to_string());
        // Progress output is best effort: a closed stderr must not fail the work.
        let _ = writeln!(self.out, "{what} ({size})");
    }

    fn advance(&mut self, done: u64) {
        self.done = done;
        let step = match self.total {
            Some(total) if total > 0 => (u128::from(done) * 10 / u128::from(total)).min(10) as u64,
            _ => done / UNKNOWN_SIZE_STEP,
        };
        if step > self.reported {
            self.reported = step;
            let line = match self.total {
                Some(total) => format!(
                    "{}: {}% ({} of {})",
                    self.what,
                    step * 10,
                    HumanBytes(done),
                    HumanBytes(total)
                ),
                None => format!("{}: {}", self.what, HumanBytes(done)),
            };
            let _ = writeln!(self.out, "{line}");
        }
    }

    fn finish(&mut self, ok: bool) {
        let state = if ok { "done" } else { "failed" };
        let _ = writeln!(
            self.out,
            "{}: {state}, {}",
            self.what,
            HumanBytes(self.done)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_every_tenth() {
        let mut p = LineProgress::new(Vec::new());
        p.start("pulling x.img", Some(1000));
        for done in (0..=1000).step_by(50) {
            p.advance(done);
        }
        p.finish(true);
        let text = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 12, "{text}");
        assert_eq!(lines[0], "pulling x.img (1000 B)");
        assert_eq!(lines[1], "pulling x.img: 10% (100 B of 1000 B)");
        assert_eq!(lines[10], "pulling x.img: 100% (1000 B of 1000 B)");
        assert_eq!(lines[11], "pulling x.img: done, 1000 B");
    }

    #[test]
    fn unknown_size_reports_by_volume() {
        let mut p = LineProgress::new(Vec::new());
        p.start("pulling y", None);
        p.advance(UNKNOWN_SIZE_STEP - 1);
        p.advance(UNKNOWN_SIZE_STEP * 2 + 5);
        p.finish(false);
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert_eq!(
            text,
            "pulling y (size unknown)\npulling y: 200.00 MiB\npulling y: failed, 200.00 MiB\n"
        );
    }
}
