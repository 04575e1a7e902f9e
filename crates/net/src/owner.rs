//! The process an attachment belongs to, identified by pid and start time (so a reused pid is
//! not mistaken for the owner): when it is gone, `prune` undoes the attachment.

use serde::{Deserialize, Serialize};

/// A process, as pid + start time (clock ticks since boot, /proc/PID/stat field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Process id.
    pub pid: i32,
    /// Start time of that process.
    pub start_time: u64,
}

/// Field 22 of /proc/PID/stat: after the command name, which may itself contain spaces and ')'.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

impl Owner {
    /// The running process `pid`.
    pub fn process(pid: i32) -> std::io::Result<Owner> {
        match start_time(pid) {
            Some(start_time) if pid > 0 => Ok(Owner { pid, start_time }),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no process {pid}"),
            )),
        }
    }

    /// This process.
    pub fn current() -> Owner {
        Owner::process(std::process::id() as i32).expect("/proc/self/stat is readable")
    }

    /// True while the process runs (a zombie counts as gone).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            == Some("Z");
        !zombie && parse_start_time(&stat) == Some(self.start_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let stat = "42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 12345 19 20";
        assert_eq!(parse_start_time(stat), Some(12345));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn self_is_alive_and_a_dead_child_is_not() {
        assert!(Owner::current().alive());
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let o = Owner::process(c.id() as i32);
        c.wait().unwrap();
        if let Ok(o) = o {
            assert!(!o.alive());
        }
        let fake = Owner {
            start_time: Owner::current().start_time + 1,
            ..Owner::current()
        };
        assert!(
            !fake.alive(),
            "a reused pid with another start time is not the owner"
        );
    }
}
