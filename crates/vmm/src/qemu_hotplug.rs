//! Handing a root disk to a running QEMU microvm (the warm pool's hand-over). virtio-mmio has no
//! hot-plug, so a pooled VM boots with its root virtio-blk device already there, backed by a
//! placeholder: a `raw` node named [`ROOT_NODE`] over a `null-co` child of [`PLACEHOLDER_BYTES`]
//! that reads zeroes. At the hand-over, over QMP:
//!
//! 1. `add-fd` the image disk (read-only) and a fresh qcow2 overlay over it (read-write), each
//!    sent as SCM_RIGHTS: the jailed QEMU needs no path to either, no bind mount into its jail;
//! 2. `blockdev-add` a `raw` node over the base (`/dev/fdset/N`, read-only, unlocked like the
//!    cold path's shared base) and a `qcow2` node over the overlay with the base as its backing;
//! 3. `blockdev-reopen` the `raw` root node with `file` pointing at the qcow2 node: the device
//!    now reads and writes the image through its own copy-on-write layer, as after a cold boot
//!    (crate::qemu's command line builds the same base0/disk0 pair).
//!
//! The guest read its disk's capacity at probe, from the placeholder (1 TiB); QEMU checks every
//! request against the current size, and ext4 only needs a device at least as large as the
//! filesystem, so no resize notification is needed (it would reach the guest asynchronously,
//! possibly after the agent mounted). The agent does not touch the disk before `create` (it waits
//! at its hello), and the partition scan of the placeholder at probe read zeroes and closed the
//! device, which drops its page cache: nothing of the placeholder is seen afterwards.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::json;

use crate::error::{Result, VmmError};
use crate::qmp::Qmp;

/// The node the pooled VM's root virtio-blk device is attached to.
pub const ROOT_NODE: &str = "root";
/// The capacity the guest sees for its root disk: the largest image a pooled VM can take.
pub const PLACEHOLDER_BYTES: u64 = 1 << 40;

/// The `-blockdev` of a pooled VM's placeholder root node.
pub(crate) fn placeholder_blockdev() -> String {
    format!(
        "driver=raw,node-name={ROOT_NODE},file.driver=null-co,file.size={PLACEHOLDER_BYTES},file.read-zeroes=on"
    )
}

fn failed(step: &str, e: impl std::fmt::Display) -> VmmError {
    VmmError::HotAdd(format!("{step}: {e}"))
}

/// Hands the image disk `base` to the VM behind `qmp` as its root disk, with a new qcow2
/// overlay at `overlay` (replaced if it exists; the caller removes it when this fails).
pub fn hot_add_root(qmp: &mut Qmp, base: &Path, overlay: &Path) -> Result<()> {
    let base_file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(base)
        .map_err(|e| VmmError::file("root disk", base, e))?;
    let meta = base_file
        .metadata()
        .map_err(|e| VmmError::file("root disk", base, e))?;
    if !meta.is_file() {
        return Err(VmmError::InvalidConfig(format!(
            "root disk {} is not a regular file",
            base.display()
        )));
    }
    if meta.len() > PLACEHOLDER_BYTES {
        return Err(VmmError::InvalidConfig(format!(
            "root disk {} ({} bytes) is larger than a pooled VM's root device ({PLACEHOLDER_BYTES})",
            base.display(),
            meta.len()
        )));
    }
    let top: File =
        crate::qcow2::create(overlay, base, "/disk0").map_err(|source| VmmError::Cow {
            cow: overlay.to_path_buf(),
            base: base.to_path_buf(),
            source,
        })?;
    let base_set = add_fd(qmp, &base_file, "base")?;
    let top_set = add_fd(qmp, &top, "overlay")?;
    // Test builds: a file QEMU cannot open, to see the failed hand-over's path end to end.
    let base_name = if strata_container::kill_point::fails("qemu:hot-add") {
        "/dev/fdset/4096".to_string()
    } else {
        format!("/dev/fdset/{base_set}")
    };
    qmp.execute(
        "blockdev-add",
        Some(json!({
            "driver": "raw", "node-name": "base0", "read-only": true,
            "file": {"driver": "file", "filename": base_name, "locking": "off"}
        })),
        &[],
    )
    .map_err(|e| failed("the image", e))?;
    qmp.execute(
        "blockdev-add",
        Some(json!({
            "driver": "qcow2", "node-name": "disk0", "backing": "base0",
            "file": {"driver": "file", "filename": format!("/dev/fdset/{top_set}")}
        })),
        &[],
    )
    .map_err(|e| failed("the overlay", e))?;
    qmp.execute(
        "blockdev-reopen",
        Some(json!({"options": [{"driver": "raw", "node-name": ROOT_NODE, "file": "disk0"}]})),
        &[],
    )
    .map_err(|e| failed("the root device", e))?;
    Ok(())
}

/// Sends `file` to QEMU with `add-fd`; returns its fd set's id.
fn add_fd(qmp: &mut Qmp, file: &File, what: &str) -> Result<u64> {
    let v = qmp
        .execute("add-fd", Some(json!({"opaque": what})), &[file.as_raw_fd()])
        .map_err(|e| failed(what, e))?;
    v.get("fdset-id")
        .and_then(serde_json::Value::as_u64)
        .filter(|id| *id < 1 << 31)
        .ok_or_else(|| failed(what, format!("add-fd answered {v} (no fdset-id)")))
}
