//! Pausing and resuming every process of a cgroup: v1 `freezer.state`, v2
//! `cgroup.freeze` / `cgroup.events`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::files::{read, read_optional, write};
use super::CgroupError;

/// Freezes a v1 freezer cgroup. The kernel may report FREEZING for a while (or
/// for ever, while new tasks keep arriving); like runc, keep re-asking, and thaw
/// briefly now and then so a fork storm cannot keep us from ever catching up.
pub(crate) fn freeze_v1(d: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    for i in 0..1000 {
        if i % 50 == 49 {
            let _ = write(d, "freezer.state", "THAWED");
            std::thread::sleep(Duration::from_millis(10));
        }
        write(d, "freezer.state", "FROZEN")?;
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_micros(10));
        }
        let state = read(d, "freezer.state")?;
        match state.trim() {
            "FROZEN" => return Ok(()),
            "FREEZING" => continue,
            other => {
                return Err(CgroupError::Parse {
                    path: d.join("freezer.state"),
                    content: other.chars().take(40).collect(),
                })
            }
        }
    }
    let _ = write(d, "freezer.state", "THAWED");
    Err(CgroupError::FreezeTimeout {
        path: d.join("freezer.state"),
        state: "FROZEN",
        waited_ms: start.elapsed().as_millis() as u64,
    })
}

/// Thaws a v1 freezer cgroup.
pub(crate) fn thaw_v1(d: &Path) -> Result<(), CgroupError> {
    write(d, "freezer.state", "THAWED")
}

/// Whether a v1 freezer cgroup is (fully) frozen.
pub(crate) fn is_frozen_v1(d: &Path) -> Result<bool, CgroupError> {
    Ok(read(d, "freezer.state")?.trim() == "FROZEN")
}

fn events_frozen(d: &Path) -> Result<Option<bool>, CgroupError> {
    let Some(events) = read_optional(d, "cgroup.events")? else {
        return Ok(None);
    };
    Ok(events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1"))
}

/// Sets `cgroup.freeze` and waits until `cgroup.events` reports the new state.
fn set_v2(d: &Path, frozen: bool) -> Result<(), CgroupError> {
    write(d, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let start = Instant::now();
    let limit = Duration::from_secs(5);
    let mut pause = Duration::from_micros(200);
    loop {
        match events_frozen(d)? {
            // Kernels without the "frozen" key in cgroup.events: the write is all we can check.
            None => return Ok(()),
            Some(state) if state == frozen => return Ok(()),
            Some(_) => {}
        }
        if start.elapsed() > limit {
            if frozen {
                let _ = write(d, "cgroup.freeze", "0");
            }
            return Err(CgroupError::FreezeTimeout {
                path: d.join("cgroup.events"),
                state: if frozen { "frozen" } else { "thawed" },
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

pub(crate) fn freeze_v2(d: &Path) -> Result<(), CgroupError> {
    set_v2(d, true)
}

pub(crate) fn thaw_v2(d: &Path) -> Result<(), CgroupError> {
    set_v2(d, false)
}

/// Whether a v2 cgroup is frozen: asked to freeze, and the kernel says it is.
pub(crate) fn is_frozen_v2(d: &Path) -> Result<bool, CgroupError> {
    if read(d, "cgroup.freeze")?.trim() != "1" {
        return Ok(false);
    }
    Ok(events_frozen(d)?.unwrap_or(true))
}
