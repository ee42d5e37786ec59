//! Progress on stderr: a bar on a terminal, plain lines in logs and CI.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use qemu_compose::engine::{LineProgress, Progress};

/// The right reporter for stderr: a bar when it is a terminal, lines otherwise.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(BarProgress::default())
    } else {
        Box::new(LineProgress::new(std::io::stderr()))
    }
}

/// An `indicatif` bar on stderr.
#[derive(Debug, Default)]
pub struct BarProgress(Option<ProgressBar>);

impl Progress for BarProgress {
    fn start(&mut self, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(what.to_owned());
        self.0 = Some(bar);
    }

    fn advance(&mut self, done: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(done);
        }
    }

    fn finish(&mut self, ok: bool) {
        if let Some(bar) = self.0.take() {
            if ok {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }
}
