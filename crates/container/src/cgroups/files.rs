//! Reading and writing cgroup control files, with errors that name the file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::CgroupError;

/// Writes `value` to `dir/file` in one write(2), as the kernel expects.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    write_each(dir, file, &[value])
}

/// Writes each value to `dir/file` with its own write(2) on one open file: cgroupfs takes
/// every write as one command (e.g. one `devices.allow` rule), and the container start
/// saves an open and a path walk per value.
pub(crate) fn write_each(dir: &Path, file: &str, values: &[&str]) -> Result<(), CgroupError> {
    let path = dir.join(file);
    // O_TRUNC as `echo >` does: cgroupfs ignores it, plain files (tests) need it.
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(source) => return Err(write_error(dir, path, values.first().copied(), source)),
    };
    for value in values {
        if let Err(source) = f.write_all(value.as_bytes()) {
            return Err(write_error(dir, path, Some(value), source));
        }
    }
    Ok(())
}

fn write_error(dir: &Path, path: PathBuf, value: Option<&str>, source: io::Error) -> CgroupError {
    let hint = match source.raw_os_error() {
        Some(libc::ENOENT) if !dir.is_dir() => " (the cgroup directory does not exist: was the container deleted, or its cgroup removed?)",
        Some(libc::ENOENT) => " (the controller owning this file is not available here: not mounted, or not enabled in the parent's cgroup.subtree_control)",
        Some(libc::EINVAL) => " (the kernel rejected the value: out of range, or inconsistent with the parent's or current limits)",
        Some(libc::EBUSY) => " (the cgroup is in use: current usage exceeds the new limit, or a child cgroup depends on it)",
        Some(libc::ENOSPC) => " (cpuset.cpus/mems of this cgroup are empty)",
        _ => "",
    };
    CgroupError::Write {
        path,
        value: value.unwrap_or_default().to_owned(),
        hint,
        source,
    }
}

/// Reads `dir/file` whole.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

/// Reads `dir/file` if it exists.
pub(crate) fn read_optional(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// Parses a single unsigned number; `max` reads as `u64::MAX`.
pub(crate) fn parse_u64(dir: &Path, file: &str, content: &str) -> Result<u64, CgroupError> {
    let t = content.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse().map_err(|_| CgroupError::Parse {
        path: dir.join(file),
        content: t.chars().take(100).collect(),
    })
}

/// Reads a single-number file if it exists.
pub(crate) fn read_u64_optional(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    match read_optional(dir, file)? {
        Some(s) => parse_u64(dir, file, &s).map(Some),
        None => Ok(None),
    }
}

/// Parses `key value` lines (memory.stat, cpu.stat...) into pairs, skipping lines
/// that are not of that shape.
pub(crate) fn parse_flat_keyed(content: &str) -> Vec<(String, u64)> {
    content
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}
