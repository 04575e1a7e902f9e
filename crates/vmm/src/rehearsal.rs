//! The rehearsal disk of a pooled qemu VM: a small read-only ext4 image holding the static agent
//! (`/strata-agent`) and the mount points a start uses. The pooled VM's agent runs one start
//! on it before its Hello (crates/agent/src/rehearsal.rs), so that the guest kernel's start
//! paths are translated by QEMU's TCG before a workload arrives. It holds no workload data, and
//! one image (cached by the agent's sha256) serves every pooled VM: QEMU opens it read-only.

use std::path::{Path, PathBuf};
#[cfg(test)]
use std::process::Command;
use std::process::Stdio;

use crate::error::{Result, VmmError};

/// The agent's path on the rehearsal disk (crates/agent/src/rehearsal.rs runs it).
pub const AGENT_PATH: &str = "strata-agent";
/// Room for the file system's own metadata beside the agent.
const SLACK_BYTES: u64 = 4 << 20;

/// Builds (once; cached by the agent's sha256 in `cache_dir`) the rehearsal disk holding
/// `agent`, and returns its path (world-readable, for the jailed QEMU).
pub fn rehearsal_disk(agent: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let (data, key) = crate::initramfs::read_agent(agent)?;
    let out = cache_dir.join(format!("rehearsal-{key}.ext4"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| VmmError::file("rehearsal disk cache", cache_dir, e))?;
    let unique = crate::cache_file::unique();
    let tree = cache_dir.join(format!(".rehearsal-tree-{unique}"));
    let tmp = cache_dir.join(format!(".rehearsal-{unique}.ext4"));
    let built = build(&data, &tree, &tmp).and_then(|()| {
        std::fs::rename(&tmp, &out).map_err(|e| VmmError::file("rehearsal disk", &out, e))
    });
    let _ = std::fs::remove_dir_all(&tree);
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    built?;
    crate::cache_file::sync_dir(cache_dir);
    Ok(out)
}

fn build(agent: &[u8], tree: &Path, image: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = |p: &Path, mode: u32| {
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(p)
            .map_err(|e| VmmError::file("rehearsal disk tree", p, e))
    };
    dir(tree, 0o755)?;
    // The mount points of a start (crates/agent/src/rehearsal.rs's mounts); /dev's own are
    // made in its tmpfs.
    for (name, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
    ] {
        dir(&tree.join(name), mode)?;
    }
    let bin = tree.join(AGENT_PATH);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&bin)
        .map_err(|e| VmmError::file("rehearsal disk tree", &bin, e))?;
    std::io::Write::write_all(&mut f, agent)
        .map_err(|e| VmmError::file("rehearsal disk tree", &bin, e))?;
    drop(f);
    let size = (agent.len() as u64 + SLACK_BYTES).div_ceil(1 << 20) << 20;
    let img = crate::cache_file::create_new(image, 0o644)
        .map_err(|e| VmmError::file("rehearsal disk", image, e))?;
    img.set_len(size)
        .map_err(|e| VmmError::file("rehearsal disk", image, e))?;
    drop(img);
    // The same file system options as the image disks (crate::disk), so the rehearsal takes
    // the paths the workload's mount takes.
    let output = crate::disk::mkfs_ext4("strata-rehearsal")
        .arg("-d")
        .arg(tree)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| VmmError::file("mkfs.ext4 (apt-get install e2fsprogs)", image, e))?;
    if !output.status.success() {
        return Err(VmmError::InvalidConfig(format!(
            "mkfs.ext4 of the rehearsal disk {} failed ({}): {}",
            image.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_holds_the_agent_and_is_built_once() {
        let t = tempfile::tempdir().unwrap();
        let agent = t.path().join("agent");
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(std::iter::repeat_n(0xa5u8, 100_000));
        std::fs::write(&agent, &elf).unwrap();
        let cache = t.path().join("cache");
        let disk = rehearsal_disk(&agent, &cache).unwrap();
        assert!(disk
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("rehearsal-"));
        // What the guest will find on it: read back with debugfs (e2fsprogs).
        let debugfs = |request: &str| {
            Command::new("debugfs")
                .args(["-R", request])
                .arg(&disk)
                .stderr(Stdio::null())
                .output()
                .unwrap()
                .stdout
        };
        assert_eq!(debugfs("cat /strata-agent"), elf);
        let ls = debugfs("ls -l /");
        let ls = String::from_utf8_lossy(&ls);
        for want in ["proc", "sys", "dev", "tmp", "strata-agent"] {
            assert!(ls.contains(want), "{want}: {ls}");
        }
        // Cached: the same agent gives the same file, untouched; nothing else is left.
        let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();
        assert_eq!(rehearsal_disk(&agent, &cache).unwrap(), disk);
        assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), mtime);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    }

    #[test]
    fn a_non_elf_agent_is_refused_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let agent = t.path().join("agent");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let cache = t.path().join("cache");
        let e = rehearsal_disk(&agent, &cache).unwrap_err();
        assert!(e.to_string().contains("not an ELF"), "{e}");
        assert!(!cache.exists());
    }
}
