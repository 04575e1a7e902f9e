//! The Kubernetes registration of docs/kubernetes.md, tested as far as this machine allows: the
//! containerd config snippet is taken from the doc itself, pointed at the built strata-oci, and a
//! private containerd with the CRI plugin enabled must load it (cri plugin `ok`, both handlers in
//! `config dump` and in the CRI plugin's start-up configuration), and each VM handler's binary
//! (the `strata-oci --vm` wrapper, on the default platform and on qemu) must run a container in a
//! VM through containerd's runc shim.

mod engines;

use engines::command::{run, wait_for};
use engines::daemons::{start_containerd, tail};
use engines::matrix::Layer;
use engines::sandbox::Sandbox;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// The first ```toml block of docs/kubernetes.md.
fn doc_snippet() -> String {
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/kubernetes.md");
    let text = fs::read_to_string(doc).unwrap_or_else(|e| panic!("read {doc}: {e}"));
    let start = text
        .find("```toml\n")
        .expect("docs/kubernetes.md has a ```toml block")
        + "```toml\n".len();
    let len = text[start..]
        .find("```")
        .expect("the ```toml block is closed");
    text[start..start + len].to_string()
}

#[test]
fn containerd_cri_loads_the_documented_strata_handlers() {
    let mut sb = Sandbox::new("k8s");
    let strata = env!("CARGO_BIN_EXE_strata-oci");
    // The wrappers of docs/kubernetes.md's install step, pointed at the built binary.
    let wrapper = |name: &str, env: &str| {
        let path = sb.path(name);
        fs::write(
            &path,
            format!("#!/bin/sh\n{env}exec {strata} --vm \"$@\"\n"),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let vm_wrapper = wrapper("strata-oci-vm", "");
    let qemu_wrapper = wrapper("strata-oci-vm-qemu", "STRATA_VM_PLATFORM=qemu ");

    // The qemu wrapper's path first: the default one is a prefix of it.
    let snippet = doc_snippet()
        .replace(
            "/usr/local/bin/strata-oci-vm-qemu",
            &qemu_wrapper.display().to_string(),
        )
        .replace(
            "/usr/local/bin/strata-oci-vm\"",
            &format!("{}\"", vm_wrapper.display()),
        )
        .replace("/usr/local/bin/strata-oci\"", &format!("{strata}\""));
    assert!(
        snippet.contains(strata)
            && snippet.contains(&*vm_wrapper.to_string_lossy())
            && snippet.contains(&*qemu_wrapper.to_string_lossy())
            && !snippet.contains("/usr/local/bin"),
        "{snippet}"
    );
    // Keep the CRI plugin's host-facing paths inside the sandbox; never pull the pause image.
    let cri = format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/conf"
# As in `containerd config default`, which the doc's snippet is added to: without the default
# handler the CRI plugin refuses to load.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{snippet}"#,
        d = sb.dir.display()
    );
    let cd = start_containerd(&mut sb, true, &cri);

    // The CRI plugin initialises asynchronously after the socket is up.
    let plugins = wait_for(Duration::from_secs(30), || {
        let o = run(
            Command::new("ctr")
                .arg("-a")
                .arg(&cd.socket)
                .args(["plugins", "ls"]),
            Duration::from_secs(10),
        )
        .ok()?;
        let line = o
            .stdout
            .lines()
            .find(|l| {
                l.starts_with("io.containerd.grpc.v1") && l.split_whitespace().nth(1) == Some("cri")
            })
            .map(str::to_string);
        match line {
            Some(l) if l.split_whitespace().last() == Some("ok") => Ok(Ok(l)),
            Some(l) if l.split_whitespace().last() == Some("error") => {
                Ok(Err(format!("cri plugin failed: {l}")))
            }
            Some(l) => Err(format!("cri plugin not ok yet: {l}")),
            None => Err(format!("no cri plugin listed:\n{}", o.stdout)),
        }
    });
    if let Err(e) = plugins.and_then(|r| r) {
        panic!("{e}\n--- containerd log ---\n{}", tail(&cd.log));
    }

    let dump = run(
        Command::new("containerd")
            .arg("--config")
            .arg(&cd.config)
            .args(["config", "dump"]),
        Duration::from_secs(30),
    )
    .ok()
    .expect("containerd config dump");
    for (handler, binary) in [
        ("strata", strata.to_string()),
        ("strata-vm", vm_wrapper.display().to_string()),
        ("strata-vm-qemu", qemu_wrapper.display().to_string()),
    ] {
        let table = format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}.options]"
        );
        let at = dump
            .stdout
            .find(&table)
            .unwrap_or_else(|| panic!("config dump lacks {table}:\n{}", dump.stdout));
        let body = &dump.stdout[at..];
        let body = &body[..body[table.len()..]
            .find("\n[")
            .map(|i| i + table.len())
            .unwrap_or(body.len())];
        assert!(
            body.contains(&format!("BinaryName = \"{binary}\"")),
            "handler {handler} options:\n{body}"
        );
    }

    // containerd logs the configuration the CRI plugin actually started with.
    let log = wait_for(Duration::from_secs(10), || {
        let log = fs::read_to_string(&cd.log).map_err(|e| e.to_string())?;
        log.lines()
            .find(|l| l.contains("Start cri plugin with config"))
            .map(str::to_string)
            .ok_or_else(|| "no CRI start-up line yet".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cd.log)));
    for handler in ["strata", "strata-vm", "strata-vm-qemu"] {
        let entry = format!("{handler}:{{Type:io.containerd.runc.v2");
        assert!(
            log.contains(&entry),
            "CRI start-up config lacks `{entry}`:\n{log}"
        );
    }
    assert!(
        log.contains("PodAnnotations:[dev.strata.isolation dev.strata.vm.platform]"),
        "strata handler lets dev.strata.isolation and dev.strata.vm.platform through:\n{log}"
    );

    // Each VM handler's binary (the documented `--vm` wrappers) runs an unannotated container in
    // a VM through containerd's runc shim: the same shim calls the CRI plugin makes for a pod.
    let img = engines::image::build(&sb);
    let ctr = || {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&cd.socket).arg("-n").arg(&sb.name);
        c
    };
    run(
        ctr().args(["images", "import"]).arg(&img.archive),
        Duration::from_secs(120),
    )
    .ok()
    .expect("ctr images import");
    let host = run(Command::new("uname").arg("-r"), Duration::from_secs(5)).stdout;
    // Where the host has VMX/SVM the default platform is qemu too (`auto` picks qemu+kvm).
    let default_is_qemu = fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "vmx" || w == "svm"));
    let mut default_release = String::new();
    for (layer, handler, binary) in [
        (Layer::Vm, "strata-vm", &vm_wrapper),
        (Layer::VmQemu, "strata-vm-qemu", &qemu_wrapper),
    ] {
        // Expected to run wherever the VM rows of the other engine tests pass: not a skip.
        if let Err(why) = engines::runtime::probe_vm_layer(&sb, &img.rootfs, layer.annotations()) {
            panic!("the {handler} handler cannot run, VM isolation is unavailable: {why}");
        }
        let o = run(
            ctr()
                .args(["run", "--rm", "--runc-binary"])
                .arg(binary)
                .arg("--runc-root")
                .arg(sb.path("runc-root"))
                .arg("--fifo-dir")
                .arg(sb.path("fifo"))
                .arg(engines::image::IMAGE_REF)
                .arg(format!("{}-{}", sb.name, layer.label()))
                .args(["uname", "-r"]),
            Duration::from_secs(120),
        )
        .ok()
        .unwrap_or_else(|e| panic!("ctr run through the {handler} handler's binary: {e}"));
        let release = o.stdout.trim();
        assert!(
            !release.is_empty() && release != host.trim(),
            "the {handler} handler's binary should run the container on a guest kernel, not the host's {}:\n{}",
            host.trim(),
            o.describe()
        );
        if layer == Layer::Vm {
            default_release = release.to_string();
        } else if !default_is_qemu {
            // Each platform boots its own kernel: the same release means the platform was ignored.
            assert_ne!(
                release,
                default_release,
                "the {handler} handler's binary booted the default platform's (UML's) kernel: \
                 STRATA_VM_PLATFORM=qemu was ignored:\n{}",
                o.describe()
            );
        }
    }
}
