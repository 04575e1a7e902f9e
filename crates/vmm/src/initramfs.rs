//! The agent's initramfs: how strata-agent gets into the guest.
//!
//! The guest kernel unpacks a tiny newc cpio archive holding only `/strata-agent` (and the
//! directories it mounts on) into its initial root and runs it as PID 1 (`rdinit=`). The agent
//! then mounts the image disk and switches into it, so the image's disk is never modified to
//! carry the agent and one archive serves every image. The archive is built once per agent binary
//! (keyed by its sha256) and cached.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache_file;
use crate::error::{Result, VmmError};

/// The agent's path inside the guest (`VmConfig::init`).
pub const AGENT_GUEST_PATH: &str = "/strata-agent";

/// One entry of a newc archive.
#[derive(Debug, Clone)]
pub(crate) enum Entry<'a> {
    Dir {
        name: &'a str,
        mode: u32,
    },
    File {
        name: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    CharDev {
        name: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    if size > u32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file too large for cpio",
        ));
    }
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    write!(
        out,
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0, // uid
        0, // gid
        0, // mtime: fixed, so the archive is reproducible
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() + 1,
        0, // check
    )?;
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Encodes `entries` as a newc cpio archive (the kernel's initramfs format).
pub(crate) fn encode(entries: &[Entry<'_>]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir { name, mode } => header(&mut out, ino, 0o040000 | mode, 0, (0, 0), name)?,
            Entry::File { name, mode, data } => {
                header(&mut out, ino, 0o100000 | mode, data.len(), (0, 0), name)?;
                out.extend_from_slice(data);
                pad4(&mut out);
            }
            Entry::CharDev {
                name,
                mode,
                major,
                minor,
            } => header(&mut out, ino, 0o020000 | mode, 0, (*major, *minor), name)?,
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!")?;
    Ok(out)
}

/// Reads the agent binary; returns it and its cache key (the first 16 hex digits of its sha256).
pub(crate) fn read_agent(agent: &Path) -> Result<(Vec<u8>, String)> {
    let data = std::fs::read(agent).map_err(|e| VmmError::file("agent binary", agent, e))?;
    if !data.starts_with(b"\x7fELF") {
        return Err(VmmError::InvalidConfig(format!(
            "agent {} is not an ELF executable: build strata-agent (static) first",
            agent.display()
        )));
    }
    let mut key = hex::encode(Sha256::digest(&data));
    key.truncate(16);
    Ok((data, key))
}

/// Builds (once; cached by the agent's sha256 in `cache_dir`) the initramfs holding `agent` as
/// [`AGENT_GUEST_PATH`]. Returns its path; the file is world-readable so a jailed VM can read it.
pub fn agent_initramfs(agent: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let (data, key) = read_agent(agent)?;
    let out = cache_dir.join(format!("agent-{key}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    let archive = encode(&[
        Entry::Dir {
            name: "dev",
            mode: 0o755,
        },
        Entry::CharDev {
            name: "dev/console",
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::Dir {
            name: "proc",
            mode: 0o555,
        },
        Entry::Dir {
            name: "sys",
            mode: 0o555,
        },
        Entry::Dir {
            name: "tmp",
            mode: 0o1777,
        },
        Entry::Dir {
            name: "mnt",
            mode: 0o755,
        },
        Entry::File {
            name: &AGENT_GUEST_PATH[1..],
            mode: 0o755,
            data: &data,
        },
    ])
    .map_err(|e| VmmError::file("initramfs", &out, e))?;
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| VmmError::file("initramfs cache", cache_dir, e))?;
    cache_file::write_atomic(&out, 0o644, &archive)
        .map_err(|e| VmmError::file("initramfs", &out, e))?;
    Ok(out)
}

/// The initramfs for a user's kernel that brings its own initrd (`--kernel PATH --initrd PATH`):
/// strata's agent archive followed by the user's (the kernel unpacks concatenated archives, each
/// compressed or not, in order). Cached in `cache_dir` by the agent archive's name and the user
/// file's path, size and modification time.
pub fn with_user_initrd(
    agent_initrd: &Path,
    user_initrd: &Path,
    cache_dir: &Path,
) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(user_initrd).map_err(|e| VmmError::file("initrd", user_initrd, e))?;
    if !meta.is_file() {
        return Err(VmmError::InvalidConfig(format!(
            "initrd {} is not a regular file",
            user_initrd.display()
        )));
    }
    let key = format!(
        "{}\0{}\0{}\0{}",
        agent_initrd.display(),
        std::fs::canonicalize(user_initrd)
            .unwrap_or_else(|_| user_initrd.to_path_buf())
            .display(),
        meta.len(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let out = cache_dir.join(format!("user-{}.cpio", &hash[..16]));
    if out.is_file() {
        return Ok(out);
    }
    let mut data = std::fs::read(agent_initrd)
        .map_err(|e| VmmError::file("agent initramfs", agent_initrd, e))?;
    while !data.len().is_multiple_of(4) {
        data.push(0);
    }
    let user = std::fs::read(user_initrd).map_err(|e| VmmError::file("initrd", user_initrd, e))?;
    data.extend_from_slice(&user);
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| VmmError::file("initramfs cache", cache_dir, e))?;
    cache_file::write_atomic(&out, 0o644, &data)
        .map_err(|e| VmmError::file("initramfs", &out, e))?;
    Ok(out)
}

/// Writes to `out` an initrd holding kernel modules `names` (and what they depend on) of release
/// `release` from the module tree `modules_dir` (e.g. `/lib/modules/RELEASE`), with the matching
/// `modules.dep` lines, for a kernel that has strata's drivers as modules (the agent loads them).
/// Names missing from the tree are skipped (built in).
pub fn module_initrd(release: &str, modules_dir: &Path, names: &[&str], out: &Path) -> Result<()> {
    let dep_path = modules_dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path)
        .map_err(|e| VmmError::file("modules.dep", &dep_path, e))?;
    let name_of = |p: &str| {
        let f = p.rsplit('/').next().unwrap_or("");
        let stem = f.split(".ko").next().unwrap_or("");
        stem.replace('-', "_")
    };
    let mut lines: Vec<&str> = Vec::new();
    let mut files: Vec<String> = Vec::new();
    let by_name: std::collections::HashMap<String, &str> = dep
        .lines()
        .filter_map(|l| Some((name_of(l.split_once(':')?.0), l)))
        .collect();
    let mut todo: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    while let Some(n) = todo.pop() {
        let Some(line) = by_name.get(&n) else {
            continue;
        };
        if lines.contains(line) {
            continue;
        }
        lines.push(line);
        let (path, deps) = line.split_once(':').unwrap_or((line, ""));
        files.push(path.trim().to_string());
        todo.extend(deps.split_whitespace().map(name_of));
    }
    let base = format!("lib/modules/{release}");
    let mut dirs: Vec<String> = vec!["lib".into(), "lib/modules".into(), base.clone()];
    for f in &files {
        let parts: Vec<&str> = f.split('/').collect();
        for i in 1..parts.len() {
            let d = format!("{base}/{}", parts[..i].join("/"));
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    let mut contents = Vec::new();
    for f in &files {
        let p = modules_dir.join(f);
        contents.push((
            format!("{base}/{f}"),
            std::fs::read(&p).map_err(|e| VmmError::file("module", &p, e))?,
        ));
    }
    let dep_text = lines.join("\n") + "\n";
    let dep_name = format!("{base}/modules.dep");
    let mut entries: Vec<Entry<'_>> = dirs
        .iter()
        .map(|d| Entry::Dir {
            name: d,
            mode: 0o755,
        })
        .collect();
    for (name, data) in &contents {
        entries.push(Entry::File {
            name,
            mode: 0o644,
            data,
        });
    }
    entries.push(Entry::File {
        name: &dep_name,
        mode: 0o644,
        data: dep_text.as_bytes(),
    });
    let archive = encode(&entries).map_err(|e| VmmError::file("initrd", out, e))?;
    cache_file::write_atomic(out, 0o644, &archive).map_err(|e| VmmError::file("initrd", out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = encode(&[
            Entry::Dir {
                name: "dev",
                mode: 0o755,
            },
            Entry::File {
                name: "init",
                mode: 0o755,
                data: b"abcde",
            },
        ])
        .unwrap();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // header is 110 bytes; "dev\0" → 114 → padded to 116.
        assert_eq!(&a[110..114], b"dev\0");
        let second = &a[116..];
        assert!(second.starts_with(b"070701"));
        assert_eq!(&second[14..22], b"000081ed"); // regular file 0755
        assert_eq!(&second[54..62], b"00000005"); // size
        let tail = std::str::from_utf8(&a[a.len() - 124..]).unwrap_or("");
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
    }

    #[test]
    fn agent_must_be_elf_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"#!/bin/sh\n").unwrap();
        assert!(agent_initramfs(&bad, dir.path()).is_err());
        let good = dir.path().join("agent");
        std::fs::write(&good, b"\x7fELF fake").unwrap();
        let a = agent_initramfs(&good, &dir.path().join("cache")).unwrap();
        let b = agent_initramfs(&good, &dir.path().join("cache")).unwrap();
        assert_eq!(a, b);
        assert!(std::fs::read(&a)
            .unwrap()
            .windows(12)
            .any(|w| w == b"strata-agent"));
    }
}
