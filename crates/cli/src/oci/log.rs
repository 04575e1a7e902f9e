//! runc-style logging: errors go to stderr and, with `--log`, to the log file — as JSON lines
//! `{"level":"error","msg":"...","time":"RFC3339"}` with `--log-format json`, which containerd
//! reads back to report why a command failed. Nothing is opened unless something is logged.

use std::io::Write;
use std::path::PathBuf;

pub struct Logger {
    path: Option<PathBuf>,
    json: bool,
    debug: bool,
}

impl Logger {
    pub fn new(path: Option<PathBuf>, json: bool, debug: bool) -> Logger {
        Logger { path, json, debug }
    }

    fn write(&self, level: &str, msg: &str) {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        match &self.path {
            Some(p) => {
                let r = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .and_then(|mut f| writeln!(f, "{line}"));
                if r.is_err() {
                    eprintln!("{line}");
                }
            }
            None if self.json => eprintln!("{line}"),
            None => {}
        }
    }

    /// An error: always on stderr (plain, like runc), plus the log file.
    pub fn error(&self, msg: &str) {
        eprintln!("strata-oci: {msg}");
        if self.path.is_some() || self.json {
            self.write("error", msg);
        }
    }

    /// A debug line (only with --debug).
    pub fn debug(&self, msg: &str) {
        if self.debug {
            if self.path.is_some() {
                self.write("debug", msg);
            } else {
                eprintln!("debug: {msg}");
            }
        }
    }
}
