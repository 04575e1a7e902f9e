//! `strata compare` end to end, as root, on the default busybox image in a temp store: every
//! cell of both layers (container and each VM platform this host has), the JSON keys, the SVG
//! chart, and bad input leaving nothing behind.

mod cli_common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_common::Sandbox;

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// Platforms `strata-vmm` says this host can run (the rows compare must show besides the container).
fn platforms() -> Vec<String> {
    strata_vmm::platforms()
        .into_iter()
        .filter(|p| p.check().is_ok())
        .map(|p| p.name().to_string())
        .collect()
}

/// Platforms the warm pool holds: each has a warm row beside its cold one.
const POOLED: [&str; 2] = ["uml", "qemu"];

/// VM rows: one per platform, and a warm-pool row beside the cold one of uml and qemu.
fn rows(plats: &[String]) -> usize {
    plats.len()
        + plats
            .iter()
            .filter(|p| POOLED.contains(&p.as_str()))
            .count()
}

/// A platform's row label: `vm-uml`, `vm-qemu-tcg` (the accelerator named).
fn label(p: &str) -> String {
    match strata_vmm::platform(p).unwrap().accelerator() {
        Some(a) => format!("vm-{p}-{a}"),
        None => format!("vm-{p}"),
    }
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

#[test]
fn compare_json_and_chart_in_every_layer() {
    let s = Sandbox::new("container");
    let chart = s.store.path().join("chart.svg");
    let chart_s = chart.to_str().unwrap().to_string();
    let out = s.ok(&[
        "compare", "--runs", "2", "--json", "--chart", &chart_s, "busybox", "uname", "-r",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("compare --json prints JSON");
    // The schema is stable: exactly these keys.
    assert_eq!(
        keys(&v),
        set(&[
            "schema",
            "image",
            "command",
            "runs",
            "host_kernel",
            "layers"
        ])
    );
    assert_eq!(v["schema"], "strata.compare/v2");
    assert_eq!(v["runs"], 2);
    assert_eq!(v["command"], serde_json::json!(["uname", "-r"]));
    assert_eq!(v["host_kernel"], host_kernel());
    let layers = v["layers"].as_array().unwrap();
    let plats = platforms();
    assert!(
        !plats.is_empty(),
        "this test needs a VM platform (strata info)"
    );
    assert_eq!(layers.len(), 1 + rows(&plats), "{layers:?}");
    for l in layers {
        let mut k = keys(l);
        // The warm pool's row says so (uml and qemu), beside the cold row of its platform.
        if POOLED.iter().any(|p| l["platform"] == *p) && k.remove("warm") {
            assert_eq!(l["warm"], true, "{l}");
        }
        // qemu rows name their accelerator.
        if l["platform"] == "qemu" {
            assert!(
                matches!(l["accelerator"].as_str(), Some("tcg" | "kvm")),
                "{l}"
            );
            k.remove("accelerator");
        }
        assert_eq!(
            k,
            set(&[
                "layer",
                "platform",
                "kernel",
                "start_bytes",
                "start_parts",
                "per_instance_bytes",
                "start_ms",
                "exit_ms",
                "memory_peak_bytes",
                "memory_monitor_bytes",
                "probes",
            ])
        );
        assert_eq!(
            keys(&l["start_parts"]),
            set(&["image_layers", "guest_kernel", "initramfs", "vm_disk"])
        );
        for k in [
            "start_ms",
            "exit_ms",
            "memory_peak_bytes",
            "memory_monitor_bytes",
        ] {
            assert_eq!(keys(&l[k]), set(&["min", "median", "max", "samples"]));
            assert_eq!(l[k]["samples"].as_array().unwrap().len(), 2, "{k}");
            let (min, med, max) = (
                l[k]["min"].as_f64().unwrap(),
                l[k]["median"].as_f64().unwrap(),
                l[k]["max"].as_f64().unwrap(),
            );
            assert!(0.0 < min && min <= med && med <= max, "{k}: {l}");
        }
        // The monitor's (and keeper's) RSS is a part of the total, not all of it.
        for (total, monitor) in l["memory_peak_bytes"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(l["memory_monitor_bytes"]["samples"].as_array().unwrap())
        {
            assert!(monitor.as_f64() < total.as_f64(), "{l}");
        }
        // The workload starts before it exits, in every run.
        for (s0, s1) in l["start_ms"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(l["exit_ms"]["samples"].as_array().unwrap())
        {
            assert!(s0.as_f64() <= s1.as_f64());
        }
        assert!(l["start_bytes"].as_u64().unwrap() > 0);
        assert!(l["per_instance_bytes"].as_u64().unwrap() > 0);
        assert!(l["start_parts"]["image_layers"].as_u64().unwrap() > 0);
        for p in l["probes"].as_array().unwrap() {
            assert_eq!(keys(p), set(&["name", "result", "detail"]));
            assert!(p["result"] == "works" || p["result"] == "refused", "{p}");
        }
    }
    let probe = |l: &serde_json::Value, n: &str| -> String {
        l["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("probe {n} missing in {l}"))["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let c = &layers[0];
    assert_eq!(c["layer"], "container");
    assert!(c["platform"].is_null());
    assert_eq!(
        c["kernel"],
        host_kernel(),
        "a container sees the host kernel"
    );
    assert_eq!(c["start_parts"]["guest_kernel"], 0);
    for (n, want) in [
        ("own_kernel", "refused"),
        ("host_sysctl", "refused"),
        ("mount", "refused"),
        ("set_hostname", "refused"),
        ("host_pids", "refused"),
    ] {
        assert_eq!(probe(c, n), want, "container probe {n}: {c}");
    }
    // The cold rows, one per platform in strata-vmm's order (a warm row follows its cold one).
    let cold = layers[1..].iter().filter(|l| l["warm"] != true);
    for (vm, plat) in cold.zip(&plats) {
        assert_eq!(vm["layer"], "vm");
        assert_eq!(vm["platform"], plat.as_str());
        let k = strata_vmm::kernel::default_kernel(plat).expect("a guest kernel");
        assert_eq!(
            vm["kernel"],
            k.version.as_str(),
            "the guest kernel as strata-vmm reports it"
        );
        assert_ne!(vm["kernel"], host_kernel());
        for part in ["guest_kernel", "initramfs", "vm_disk"] {
            assert!(
                vm["start_parts"][part].as_u64().unwrap() > 0,
                "{part}: {vm}"
            );
        }
        assert!(vm["start_bytes"].as_u64() > c["start_bytes"].as_u64());
        for (n, want) in [
            ("own_kernel", "works"),
            ("host_sysctl", "works"),
            ("mount", "works"),
            ("set_hostname", "works"),
            ("host_pids", "refused"),
        ] {
            assert_eq!(probe(vm, n), want, "{plat} probe {n}: {vm}");
        }
    }
    // The chart: well-formed SVG with both panels, a dot per run and the layer labels.
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    for want in [
        "time to workload start (ms)",
        "peak memory on the host (MB)",
        "container",
    ] {
        assert!(texts.iter().any(|t| t == want), "{want:?} not in {texts:?}");
    }
    for p in &plats {
        let label = label(p);
        assert!(texts.contains(&label), "{label} not in {texts:?}");
    }
    for p in plats.iter().filter(|p| POOLED.contains(&p.as_str())) {
        let warm = format!("{}-warm", label(p));
        assert!(texts.contains(&warm), "{warm} not in {texts:?}");
    }
    let dots = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .count();
    assert_eq!(
        dots,
        2 * 2 * layers.len(),
        "a dot per run, per layer, per panel"
    );
    s.assert_nothing_left(&[]);
}

#[test]
fn compare_table_has_a_row_per_layer() {
    let s = Sandbox::new("container");
    let out = s.ok(&["compare", "--runs", "1", "busybox"]);
    let row = |label: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("no {label} row in:\n{out}"))
            .to_string()
    };
    assert!(row("container").ends_with(&host_kernel()), "{out}");
    for p in platforms() {
        let r = row(&label(&p));
        assert!(!r.ends_with(&host_kernel()), "{out}");
        if POOLED.contains(&p.as_str()) {
            // The warm pool's row, beside the cold one (`vm-uml-warm`, `vm-qemu-tcg-warm`).
            let r = row(&format!("{}-warm", label(&p)));
            assert!(!r.ends_with(&host_kernel()), "{out}");
        }
    }
    for probe in [
        "own_kernel",
        "load_module",
        "host_sysctl",
        "host_pids",
        "mount",
    ] {
        row(probe);
    }
    s.assert_nothing_left(&[]);
}

/// Cgroup directories of strata instances (containers and VMs) on this host.
fn instance_cgroups() -> BTreeSet<PathBuf> {
    let mut v = BTreeSet::new();
    for ctrl in [
        "memory", "pids", "cpu", "cpuacct", "devices", "freezer", "blkio", "cpuset",
    ] {
        for parent in ["strata", "strata-vm"] {
            let d = PathBuf::from("/sys/fs/cgroup").join(ctrl).join(parent);
            if let Ok(rd) = std::fs::read_dir(&d) {
                v.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
    }
    v
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    v
}

/// Runs compare, expects failure with `want` in its error, then checks nothing it started is left.
fn fails_cleanly(s: &Sandbox, args: &[&str], want: &str) {
    let before = instance_cgroups();
    let mut c = s.cmd();
    c.arg("compare").args(args).stdin(Stdio::null());
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "compare {args:?} succeeded");
    assert!(
        err.contains(want),
        "compare {args:?}: want {want:?} in: {err}"
    );
    assert!(err.starts_with("strata: error:"), "{err}");
    s.assert_nothing_left(&[]);
    let tag = format!("strata-compare-{pid}-");
    let root = s.root.path().to_str().unwrap().to_string();
    // New strata cgroups must disappear; ones still holding processes belong to other tests.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<PathBuf> = instance_cgroups()
            .difference(&before)
            .filter(|d| {
                std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
            })
            .cloned()
            .collect();
        let procs: Vec<String> = processes_with(&tag)
            .into_iter()
            .chain(processes_with(&root))
            .collect();
        if left.is_empty() && procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: cgroups {left:?}, processes {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn compare_bad_input_fails_and_cleans_up() {
    let s = Sandbox::new("container");
    fails_cleanly(&s, &["--runs", "1", "no-such-image"], "no-such-image");
    fails_cleanly(&s, &["--runs", "0", "busybox"], "--runs 0");
    fails_cleanly(&s, &["--runs", "1", "busybox", "false"], "exit code 1");
    fails_cleanly(
        &s,
        &["--runs", "1", "busybox", "sh", "-c", "exit 3"],
        "exit code 3",
    );
    fails_cleanly(
        &s,
        &["--runs", "1", "busybox", "/no/such/program"],
        "exit code 127",
    );
    fails_cleanly(&s, &["--chart", "x.png", "busybox"], "SVG");
    // Succeeds as a container (host kernel), fails in the VM: the VM instance is cleaned up too.
    let only_host = format!("test \"$(uname -r)\" = {}", host_kernel());
    fails_cleanly(
        &s,
        &["--runs", "1", "busybox", "sh", "-c", &only_host],
        "vm-",
    );
    // Usage errors from clap.
    let o = Command::new(cli_common::STRATA)
        .args(["compare", "--runs", "x", "busybox"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// `--memory` reaches every instance: a CMD that succeeds only under a 100 MiB limit (the
/// container's memory cgroup, or the VM's guest RAM) passes with `--memory 100m` in every layer
/// and fails without it, and the failing compare leaves nothing behind.
#[test]
fn compare_memory_reaches_every_layer() {
    let s = Sandbox::new("container");
    let check = "lim=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); \
                 kb=$(awk '/MemTotal/{print $2}' /proc/meminfo); \
                 [ \"$lim\" = 104857600 ] || [ \"$kb\" -lt 100000 ]";
    let out = s.ok(&[
        "compare", "--runs", "1", "--memory", "100m", "--json", "busybox", "sh", "-c", check,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["layers"].as_array().unwrap().len(),
        1 + rows(&platforms()),
        "{v}"
    );
    fails_cleanly(
        &s,
        &["--runs", "1", "busybox", "sh", "-c", check],
        "the workload failed with exit code 1",
    );
}
