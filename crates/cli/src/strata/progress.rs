//! Progress display: indicatif bars on a terminal, plain lines otherwise, nothing with --quiet.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use strata_image::Progress;

/// The progress reporter for a command.
pub fn reporter(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(strata_image::NoProgress)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars {
            bar: Mutex::new(None),
        })
    } else {
        Box::new(Lines)
    }
}

/// One bar per step, on stderr.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn begin(&self, step: &str, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        bar.set_message(step.to_string());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(bytes);
            }
        }
    }
    fn end(&self, _step: &str) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish();
            }
        }
    }
}

/// One line per finished step, on stderr.
struct Lines;

impl Progress for Lines {
    fn end(&self, step: &str) {
        eprintln!("{step}: done");
    }
}
