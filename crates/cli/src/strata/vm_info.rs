//! `strata kernel list` (guest kernels per platform) and `strata info` (what this host supports
//! and why).

use clap::{Args, Subcommand};
use serde_json::json;

use strata_engine::vm_keeper;

#[derive(Subcommand, Debug)]
pub enum KernelCommand {
    /// List the guest kernels per VM platform (path, version, source, size, default)
    #[command(alias = "ls")]
    List(JsonArg),
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn kernel(c: KernelCommand) -> anyhow::Result<()> {
    let KernelCommand::List(a) = c;
    let kernels = strata_vmm::list_kernels();
    let rows: Vec<serde_json::Value> = kernels
        .iter()
        .map(|k| {
            let default = strata_vmm::default_kernel(k.platform).is_some_and(|d| d.path == k.path);
            json!({
                "Platform": k.platform, "Path": k.path, "Version": k.version,
                "Source": k.source, "Size": k.size, "Default": default,
            })
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no guest kernels: run scripts/build-guest-kernel.sh or install user-mode-linux");
        return Ok(());
    }
    println!(
        "{:<9} {:<8} {:<22} {:>10}  {:<58} SOURCE",
        "PLATFORM", "DEFAULT", "VERSION", "SIZE", "PATH"
    );
    for r in &rows {
        println!(
            "{:<9} {:<8} {:<22} {:>10}  {:<58} {}",
            r["Platform"].as_str().unwrap_or(""),
            if r["Default"] == true { "*" } else { "" },
            r["Version"].as_str().unwrap_or(""),
            human(r["Size"].as_u64().unwrap_or(0)),
            r["Path"].as_str().unwrap_or(""),
            r["Source"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

/// `strata info`.
pub fn info(a: JsonArg) -> anyhow::Result<()> {
    let cg = strata_container::cgroups::Cgroup::resolve(None, "strata-info");
    let (container_ok, cgroup_text) = match &cg {
        Ok(c) => {
            let layout = format!("{:?}", c.layout()).to_lowercase();
            let paths: Vec<String> = c
                .paths()
                .iter()
                .filter_map(|p| p.parent().map(|d| d.display().to_string()))
                .collect();
            (true, format!("cgroups {layout} ({})", paths.join(", ")))
        }
        Err(e) => (false, format!("cgroups unusable: {e}")),
    };
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let container_text = match (container_ok, root) {
        (true, true) => format!("available: namespaces, overlayfs, {cgroup_text}"),
        (true, false) => {
            format!("unavailable: strata needs root for namespaces and mounts ({cgroup_text})")
        }
        (false, _) => format!("unavailable: {cgroup_text}"),
    };
    let chosen = strata_vmm::detect().ok().map(|p| p.name());
    let mut platforms = Vec::new();
    for p in strata_vmm::platforms() {
        let (ok, text) = match p.check() {
            Ok(()) => {
                let k = strata_vmm::default_kernel(p.name());
                let kt = k
                    .map(|k| format!("kernel {} ({}, {})", k.version, k.path.display(), k.source))
                    .unwrap_or_default();
                let d = if chosen == Some(p.name()) {
                    " (default)"
                } else {
                    ""
                };
                let accel = match p.accelerator() {
                    Some(a) if p.name() == "qemu" => {
                        format!(", accelerator {a} ({})", strata_vmm::accelerator().1)
                    }
                    Some(a) => format!(", accelerator {a}"),
                    None => String::new(),
                };
                (true, format!("available{d} with {kt}{accel}"))
            }
            Err(u) => (false, format!("unavailable: {}", u.reason)),
        };
        platforms.push((p.name(), ok, text));
    }
    let agent = vm_keeper::agent_path();
    if a.json {
        let v = json!({
            "container": {"available": container_ok && root, "detail": container_text},
            "vm": {
                "platforms": platforms.iter().map(|(n, ok, t)| json!({"name": n, "available": ok, "detail": t})).collect::<Vec<_>>(),
                "default": chosen,
                "agent": agent.as_ref().map(|p| p.display().to_string()).map_err(|e| e.clone()).ok(),
                "agent_error": agent.as_ref().err(),
            },
            "kernels": strata_vmm::list_kernels(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("container: {container_text}");
    println!("vm:");
    for (n, _, t) in &platforms {
        println!("  {n}: {t}");
    }
    match &agent {
        Ok(p) => println!("  agent: {}", p.display()),
        Err(e) => println!("  agent: missing: {e}"),
    }
    Ok(())
}
