//! Warnings of a start that did not stop it (a warm hand-over that fell back to a cold boot,
//! a guest that skipped a mount, a pooled VM whose rehearsal failed), carried to the user.
//!
//! A start runs in processes whose stderr is not the user's: the VM keeper (its stderr is
//! /dev/null unless it is the workload's) and the monitor of a detached container (/dev/null).
//! Each of them reports its success to its parent over a status pipe; the report carries the
//! warnings, one per line after `ok` ([`ok_status`]), and the parent says them ([`say`]), or,
//! when it is itself such a process (the monitor, whose VM keeper warned), keeps them for its
//! own report ([`warn`] collects what this process has to pass on).

use std::sync::Mutex;

/// At most this many warnings are kept for one report.
const MAX: usize = 64;

static PENDING: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Logs a warning and keeps it for this process's success report ([`take`]).
pub fn warn(msg: &str) {
    tracing::warn!("{msg}");
    let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    if p.len() < MAX {
        p.push(msg.to_string());
    }
}

/// The warnings kept so far (emptied).
pub fn take() -> Vec<String> {
    std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A success report: `ok`, then one line per warning (line breaks in a warning become spaces).
pub fn ok_status(warnings: &[String]) -> String {
    let mut m = String::from("ok");
    for w in warnings.iter().take(MAX) {
        m.push('\n');
        m.push_str(&w.replace(['\n', '\r'], " "));
    }
    m
}

/// The warnings of a success report ([`ok_status`]); None when `msg` is not one.
pub fn ok_warnings(msg: &str) -> Option<Vec<String>> {
    let mut lines = msg.split('\n');
    (lines.next() == Some("ok")).then(|| {
        lines
            .filter(|l| !l.trim().is_empty())
            .take(MAX)
            .map(str::to_string)
            .collect()
    })
}

/// Says the warnings of a child's success report: logged, and kept for this process's own
/// report when it has one to make.
pub fn say(warnings: Vec<String>) {
    for w in warnings {
        warn(&w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_report_carries_the_warnings_one_per_line() {
        assert_eq!(ok_status(&[]), "ok");
        let m = ok_status(&["a\nb".into(), "c".into()]);
        assert_eq!(m, "ok\na b\nc");
        assert_eq!(ok_warnings(&m).unwrap(), ["a b", "c"]);
        assert!(ok_warnings("ok").unwrap().is_empty());
        assert!(ok_warnings("err 125 no").is_none());
        assert!(ok_warnings("okay").is_none());
        assert!(ok_warnings("").is_none());
        // A report cannot grow without bound.
        let many: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(ok_warnings(&ok_status(&many)).unwrap().len(), MAX);
    }

    #[test]
    fn warnings_are_kept_until_taken() {
        take();
        warn("first");
        say(vec!["from a child".into()]);
        assert_eq!(take(), ["first", "from a child"]);
        assert!(take().is_empty());
    }
}
