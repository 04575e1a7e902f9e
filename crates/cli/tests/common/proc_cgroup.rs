//! /proc/PID/cgroup, shared by the strata-oci tests (`common`) and the engine tests
//! (`engines`, which includes this file by path).

/// The cgroup of `pid` in the hierarchy holding `controller` (`""`: cgroup2), as
/// /proc/PID/cgroup says (`/a/b`).
pub fn cgroup_line(pid: i32, controller: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read /proc/{pid}/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .ok_or_else(|| format!("pid {pid} has no {controller:?} cgroup in:\n{text}"))
}
