//! Edits of a container's bundle config.json after it was generated: the terminal a start
//! gets (`process.terminal`, `consoleSize`, the host pty bound at /dev/console).

use std::path::Path;

use anyhow::Context;

/// Writes a container directory's config.json.
pub fn write_config(dir: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    // No fsync: the container directory does not outlive a crash in a useful state anyway
    // (its overlay mount is gone), and fsync would dominate `run --rm` time.
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_vec(v)?).with_context(|| format!("write {}", p.display()))
}

/// Binds the host pty slave at /dev/console (or removes that mount) in config.json.
pub fn set_console(dir: &Path, slave: Option<&Path>) -> anyhow::Result<()> {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
    )
    .with_context(|| format!("parse {}", p.display()))?;
    let mounts = v["mounts"]
        .as_array_mut()
        .context("config.json has no mounts")?;
    mounts.retain(|m| m["destination"] != "/dev/console");
    if let Some(s) = slave {
        mounts.push(serde_json::json!({
            "destination": "/dev/console", "type": "bind", "source": s,
            "options": ["bind", "nosuid", "noexec"],
        }));
    }
    write_config(dir, &v)
}

/// Sets process.terminal and consoleSize in the bundle's config.json (and drops the host-pty
/// /dev/console bind a previous start may have added).
pub fn set_terminal(bundle: &Path, size: Option<(u16, u16)>) -> anyhow::Result<()> {
    let p = bundle.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["process"]["terminal"] = serde_json::json!(true);
    match size {
        Some((rows, cols)) => {
            v["process"]["consoleSize"] = serde_json::json!({"height": rows, "width": cols})
        }
        None => {
            if let Some(p) = v["process"].as_object_mut() {
                p.remove("consoleSize");
            }
        }
    }
    if let Some(m) = v["mounts"].as_array_mut() {
        m.retain(|m| m["destination"] != "/dev/console");
    }
    std::fs::write(&p, serde_json::to_vec(&v)?)?;
    Ok(())
}
