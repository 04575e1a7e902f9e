//! The OCI runtimes the engines are pointed at, each behind a logging wrapper so that a failing cell
//! can show exactly which runtime command lines the engine issued.

use super::command::run;
use super::sandbox::Sandbox;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Debian's runc: the reference the harness is validated against.
pub const RUNC: &str = "/usr/sbin/runc";

/// The annotation that selects strata's VM layer.
pub const VM_ANNOTATION: &str = "dev.strata.isolation=vm";
/// With [`VM_ANNOTATION`]: the VM runs on the qemu platform.
pub const QEMU_ANNOTATION: &str = "dev.strata.vm.platform=qemu";

/// One runtime binary as an engine sees it.
pub struct Runtime {
    /// "runc" or "strata-oci": also the wrapper's file name (Podman keys some behaviour off it).
    pub name: &'static str,
    /// The real binary.
    pub real: PathBuf,
    /// The logging wrapper the engine is given.
    pub wrapper: PathBuf,
    /// One line per runtime call: `[pid] args...`.
    pub calls: PathBuf,
}

impl Runtime {
    /// runc behind a logging wrapper.
    pub fn runc(sb: &Sandbox) -> Runtime {
        Runtime::wrap(sb, "runc", Path::new(RUNC))
    }

    /// strata-oci behind a logging wrapper: the one cargo built for this test, or the binary named
    /// by STRATA_ENGINES_STRATA_OCI (to try another build without rebuilding the tests).
    pub fn strata_oci(sb: &Sandbox) -> Runtime {
        Runtime::wrap(sb, "strata-oci", &strata_oci_path())
    }

    fn wrap(sb: &Sandbox, name: &'static str, real: &Path) -> Runtime {
        let dir = sb.path(&format!("rt-{name}"));
        fs::create_dir_all(&dir).expect("create wrapper dir");
        let wrapper = dir.join(name);
        let calls = dir.join("calls.log");
        let script = format!(
            "#!/bin/sh\n# logs the command line, then becomes the real runtime (same pid, fds, signals)\n\
             printf '[%s] %s\\n' \"$$\" \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            real.display()
        );
        fs::write(&wrapper, script).expect("write wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
        Runtime {
            name,
            real: real.to_path_buf(),
            wrapper,
            calls,
        }
    }

    /// Number of calls logged so far (a mark for [`Runtime::calls_since`]).
    pub fn mark(&self) -> usize {
        fs::read_to_string(&self.calls)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The runtime command lines logged after `mark`.
    pub fn calls_since(&self, mark: usize) -> String {
        fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .skip(mark)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The strata-oci binary under test (see [`Runtime::strata_oci`]).
pub fn strata_oci_path() -> PathBuf {
    std::env::var_os("STRATA_ENGINES_STRATA_OCI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata-oci")))
}

/// Whether strata-oci can run a bundle in a VM here. Err carries the reason to print when it cannot:
/// `strata-oci features` does not advertise the isolation annotation, or a probe bundle annotated
/// `dev.strata.isolation=vm` fails or does not see a guest kernel (its `uname -r` equals the host's).
pub fn probe_vm_isolation(sb: &Sandbox, rootfs: &Path) -> Result<(), String> {
    probe_vm_layer(sb, rootfs, &[VM_ANNOTATION]).map(drop)
}

/// [`probe_vm_isolation`] with the bundle annotated `annotations` (`key=value`), e.g. a platform;
/// Ok carries the guest kernel's release.
pub fn probe_vm_layer(sb: &Sandbox, rootfs: &Path, annotations: &[&str]) -> Result<String, String> {
    let strata = strata_oci_path();
    let features = run(
        Command::new(&strata).arg("features"),
        Duration::from_secs(10),
    );
    if features.code != 0 {
        return Err(format!(
            "`strata-oci features` failed:\n{}",
            features.describe()
        ));
    }
    let json: serde_json::Value = serde_json::from_str(&features.stdout).map_err(|e| {
        format!(
            "`strata-oci features` printed no JSON ({e}): {}",
            features.stdout
        )
    })?;
    let advertised = json
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| a.keys().any(|k| k.starts_with("dev.strata.isolation")))
        .unwrap_or(false);
    if !advertised {
        return Err("`strata-oci features` lists no dev.strata.isolation annotation".into());
    }

    let bundle = sb.path(&format!("vm-probe{}", annotations.len()));
    fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    run(
        Command::new(RUNC).args(["spec", "--bundle"]).arg(&bundle),
        Duration::from_secs(10),
    )
    .ok()?;
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(&cfg_path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    cfg["process"]["args"] = serde_json::json!(["uname", "-r"]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"]["path"] = serde_json::json!(rootfs);
    let mut notes = serde_json::Map::new();
    for a in annotations {
        let (k, v) = a.split_once('=').expect("annotation has =");
        notes.insert(k.into(), v.into());
    }
    cfg["annotations"] = serde_json::Value::Object(notes);
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).map_err(|e| e.to_string())?;

    let root = sb.path(&format!("vm-probe-root{}", annotations.len()));
    let probe = run(
        Command::new(&strata)
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("{}-vmprobe{}", sb.name, annotations.len())),
        Duration::from_secs(180),
    );
    if probe.code != 0 {
        return Err(format!("the VM probe bundle failed:\n{}", probe.describe()));
    }
    let host = run(Command::new("uname").arg("-r"), Duration::from_secs(5)).stdout;
    if probe.stdout.trim() == host.trim() {
        return Err(format!(
            "the VM probe ran on the host kernel ({}): the annotation was ignored",
            host.trim()
        ));
    }
    Ok(probe.stdout.trim().to_string())
}
