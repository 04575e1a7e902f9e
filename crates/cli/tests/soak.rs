//! Soak (issue 14, load): container lifecycles through strata-oci (create, start, exec, kill,
//! delete; 10 at a time), `strata run --rm` (also on a bridge network), and VM lifecycles through
//! `strata run --vm --rm` and strata-oci's VM path; after each batch common/leaks.rs finds nothing
//! left (mounts, cgroups in every hierarchy, processes, loop devices, state and temp directories;
//! veth ports, netns and attachment files for the bridge runs), and the fd count and RSS of the
//! long-lived processes (a detached container's monitor, a detached VM's keeper, exec'd into after
//! every batch) stay flat. The counts are short here (100/100/20/20/20, the test command);
//! bench/soak.sh runs 1000/1000/200/200/200 through the same tests with
//! STRATA_SOAK_{OCI,RUN,VM,OCI_VM,NET} and writes the figures printed as `soak: ...` lines to
//! docs/reliability.md.

mod cli_common;
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_common::Sandbox;
use common::leaks::{assert_no_leaks, settle_leaks, ProcUsage, Scope, Snapshot};
use common::{root_or_skip, unique_id, Bundle, Oci};
use serde_json::json;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One strata-oci lifecycle per id, `ids.len()` alive at once: create all, start all, exec in
/// each, SIGKILL all, delete all.
fn oci_batch(oci: &Oci, bundles: &[(String, Bundle)], vm: bool) {
    let flag: &[&str] = if vm { &["--vm"] } else { &[] };
    for (id, b) in bundles {
        let mut a = flag.to_vec();
        a.extend(["create", "--bundle", b.path().to_str().unwrap(), id]);
        oci.ok(&a);
    }
    for (id, _) in bundles {
        oci.ok(&["start", id]);
    }
    for (id, _) in bundles {
        let out = oci.ok(&["exec", id, "echo", "exec-ok"]);
        assert_eq!(out.trim(), "exec-ok", "exec in {id}");
    }
    for (id, _) in bundles {
        oci.ok(&["kill", id, "KILL"]);
    }
    for (id, _) in bundles {
        let t = Instant::now();
        while !oci.ok(&["state", id]).contains("\"stopped\"") {
            assert!(t.elapsed() < Duration::from_secs(60), "{id} not stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        oci.ok(&["delete", id]);
    }
}

fn oci_soak(vm: bool, total: usize, batch: usize) {
    // No PR_SET_CHILD_SUBREAPER (nor a waitpid(-1) loop) here: the tests of this binary run in
    // parallel threads, whose children such a loop would steal. Orphaned keepers go to init.
    let oci = Oci::new();
    let t0 = Instant::now();
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        let bundles: Vec<(String, Bundle)> = (0..n)
            .map(|_| {
                let id = unique_id(if vm { "soakv" } else { "soak" });
                let mut b = Bundle::sh(&id, "sleep 1000");
                if vm {
                    b.edit(|c| c["annotations"] = json!({"dev.strata.isolation": "vm"}));
                }
                (id, b)
            })
            .collect();
        let mut scope = Scope::new().path(oci.root.path());
        for (id, b) in &bundles {
            scope.add_id(id.clone());
            scope.paths.push(b.path().to_path_buf());
        }
        // strata-oci keeps no directory per container once deleted; `vm/` is its VM area.
        let vm_area = oci.root.path().join("vm");
        scope.empty_dirs.push(vm_area);
        let before = Snapshot::take(&scope);
        oci_batch(&oci, &bundles, vm);
        assert_no_leaks(
            &format!(
                "strata-oci{} lifecycles {done}..{}",
                if vm { " --vm" } else { "" },
                done + n
            ),
            &scope,
            &before,
        );
        let left: Vec<_> = std::fs::read_dir(oci.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "vm")
            .collect();
        assert!(left.is_empty(), "state left under --root: {left:?}");
        done += n;
    }
    println!(
        "soak: strata-oci{} {total} lifecycles (create, start, exec, kill, delete; {batch} at a time) in {:.1} s, nothing left after any batch",
        if vm { " --vm" } else { "" },
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn soak_oci_container_lifecycles() {
    if !root_or_skip() {
        return;
    }
    oci_soak(false, count("STRATA_SOAK_OCI", 100), 10);
}

#[test]
fn soak_oci_vm_lifecycles() {
    if !root_or_skip() {
        return;
    }
    oci_soak(true, count("STRATA_SOAK_OCI_VM", 20), 5);
}

/// Container ids seen in the store while a batch runs (`run --rm` removes them before it
/// returns, so they are collected by a watcher).
fn watch_ids(s: &Sandbox, stop: Arc<Mutex<bool>>) -> std::thread::JoinHandle<BTreeSet<String>> {
    let dir = s.store.path().join("containers");
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while !*stop.lock().unwrap() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.len() == 64 {
                    seen.insert(n);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

/// `strata run --rm` lifecycles, `batch` at a time, while one detached container of the same
/// sandbox keeps running: its monitor (and, for VMs, its keeper, exec'd into after every batch)
/// must not grow in fds.
fn run_soak(iso: &str, total: usize, batch: usize) {
    let s = Arc::new(Sandbox::new(iso));
    // The long-lived one: writes to its log all the time (the monitor's relay works).
    let long = s
        .ok(&[
            "run",
            "-d",
            "busybox",
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.05; done",
        ])
        .trim()
        .to_string();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            s.store
                .path()
                .join("containers")
                .join(&long)
                .join("record.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let monitor = rec["monitor_pid"].as_i64().expect("monitor pid") as i32;
    let keeper = iso.starts_with("vm").then(|| {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(s.root.path().join("vm").join(&long).join("state.json")).unwrap(),
        )
        .unwrap();
        st["keeper_pid"].as_i64().expect("keeper pid") as i32
    });
    let exec_long = || {
        let out = s.ok(&["exec", &long, "echo", "exec-ok"]);
        assert_eq!(out.trim(), "exec-ok");
    };
    // Warm up (first exec allocates what later ones reuse), then the baseline.
    exec_long();
    let usage = |pid: i32| ProcUsage::of(pid).unwrap_or_else(|| panic!("process {pid} is gone"));
    let (m0, k0) = (usage(monitor), keeper.map(usage));
    let t0 = Instant::now();
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        let marker = unique_id("soakrun");
        let mut scope = Scope::new()
            .path(s.store.path().join("containers"))
            .id(marker.clone());
        let before = Snapshot::take(&scope);
        let stop = Arc::new(Mutex::new(false));
        let watcher = watch_ids(&s, stop.clone());
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let s = s.clone();
                let script = format!("echo run-{i} # {marker}");
                std::thread::spawn(move || {
                    let out = s.ok(&["run", "--rm", "busybox", "sh", "-c", &script]);
                    assert_eq!(out.trim(), format!("run-{i}"));
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a run failed");
        }
        *stop.lock().unwrap() = true;
        for id in watcher.join().unwrap() {
            if id != long {
                scope.add_id(id);
            }
        }
        // A VM's keeper serves each exec (a connection and three fds passed in): five a batch.
        for _ in 0..if keeper.is_some() { 5 } else { 1 } {
            exec_long();
        }
        assert_no_leaks(
            &format!("strata run --rm ({iso}) {done}..{}", done + n),
            &scope,
            &before,
        );
        // Only the long-lived container is left in the store and the runtime root.
        let ps = s.ps();
        assert_eq!(ps.len(), 1, "containers left: {ps:?}");
        done += n;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (m1, k1) = (usage(monitor), keeper.map(usage));
    // Flat: no fd more, and resident memory within 2 MiB (allocator noise; a leak per
    // lifecycle or per exec shows over the long run in bench/soak.sh's figures).
    assert_eq!(m0.fds, m1.fds, "the monitor's fds grew: {m0:?} -> {m1:?}");
    assert!(
        m1.rss_kib <= m0.rss_kib + 2048,
        "the monitor's RSS grew: {m0:?} -> {m1:?}"
    );
    let execs = total.div_ceil(batch) * 5;
    if let (Some(k0), Some(k1)) = (k0, k1) {
        assert_eq!(
            k0.fds, k1.fds,
            "the keeper's fds grew over {execs} execs: {k0:?} -> {k1:?}"
        );
        assert!(
            k1.rss_kib <= k0.rss_kib + 2048,
            "the keeper's RSS grew over {execs} execs: {k0:?} -> {k1:?}"
        );
    }
    println!(
        "soak: strata run --rm ({iso}) {total} lifecycles ({batch} at a time) in {elapsed:.1} s, nothing left after any batch; long-lived monitor fds {} -> {}, RSS {} -> {} KiB{}",
        m0.fds,
        m1.fds,
        m0.rss_kib,
        m1.rss_kib,
        match (k0, k1) {
            (Some(a), Some(b)) => format!(
                "; keeper ({execs} execs) fds {} -> {}, RSS {} -> {} KiB",
                a.fds,
                b.fds,
                a.rss_kib,
                b.rss_kib
            ),
            _ => String::new(),
        }
    );
    s.ok(&["rm", "-f", &long]);
    s.assert_nothing_left(&[]);
}

#[test]
fn soak_strata_run_rm_containers() {
    if !root_or_skip() {
        return;
    }
    run_soak("container", count("STRATA_SOAK_RUN", 100), 10);
}

#[test]
fn soak_strata_run_rm_vms() {
    if !root_or_skip() {
        return;
    }
    run_soak("vm", count("STRATA_SOAK_VM", 20), 5);
}

#[test]
fn soak_strata_run_rm_qemu_vms() {
    if !root_or_skip() {
        return;
    }
    run_soak("vm-qemu", count("STRATA_SOAK_QEMU", 10), 5);
}

/// `strata run --rm --network NET` on a bridge network of the test's own, `batch` at a time:
/// after every batch, besides the leak checker (the containers' netns mounts live under the
/// runtime root), the bridge has no port (veth) left and no attachment or netns file is left.
#[test]
fn soak_strata_run_rm_bridge_network() {
    if !root_or_skip()
        || !strata_testkit::require(
            std::path::Path::new("/usr/lib/cni/bridge").exists(),
            "needs containernetworking-plugins (scripts/deps.sh)",
        )
    {
        return;
    }
    let (total, batch) = (count("STRATA_SOAK_NET", 20), 5);
    let s = Arc::new(Sandbox::new("container"));
    let conf = tempfile::Builder::new()
        .prefix("strata-soak-net-")
        .tempdir()
        .unwrap();
    let conf_path = conf.path().to_path_buf();
    let ok = move |s: &Sandbox, args: &[&str]| {
        let mut c = s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", &conf_path).args(args);
        let o = cli_common::output_timeout(c, None, Duration::from_secs(120));
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}{}",
            cli_common::text(&o.stdout),
            cli_common::text(&o.stderr)
        );
        cli_common::text(&o.stdout)
    };
    let net = format!("soaknet{}", std::process::id());
    let subnet = format!("10.{}.{}.0/24", 190, 20 + std::process::id() % 200);
    ok(&s, &["network", "create", "--subnet", &subnet, &net]);
    // Removes the network (its bridge device outlives the config directory) even when an
    // assertion below fails: a failed run once left its bridge on the host.
    struct RmNetwork<F: Fn()>(F);
    impl<F: Fn()> Drop for RmNetwork<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _rm_network = {
        let (s, net, conf_path) = (s.clone(), net.clone(), conf.path().to_path_buf());
        RmNetwork(move || {
            let mut c = s.cmd();
            c.env("STRATA_NET_CONFIG_DIR", &conf_path)
                .args(["network", "rm", &net]);
            let _ = cli_common::output_timeout(c, None, Duration::from_secs(60));
        })
    };
    let bridge = {
        use sha2::Digest;
        format!(
            "st-{}",
            &hex::encode(sha2::Sha256::digest(net.as_bytes()))[..12]
        )
    };
    let listing = |d: std::path::PathBuf| -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    v.push(f.path().display().to_string());
                }
            } else {
                v.push(e.path().display().to_string());
            }
        }
        v
    };
    let t0 = Instant::now();
    let mut done = 0;
    while done < total {
        let n = batch.min(total - done);
        let marker = unique_id("soaknet");
        let mut scope = Scope::new()
            .path(s.store.path())
            .path(s.root.path())
            .id(marker.clone());
        let before = Snapshot::take(&scope);
        let stop = Arc::new(Mutex::new(false));
        let watcher = watch_ids(&s, stop.clone());
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let (s, ok, net) = (s.clone(), ok.clone(), net.clone());
                let script =
                    format!("ip -4 addr show eth0 | grep -q inet && echo net-{i} # {marker}");
                std::thread::spawn(move || {
                    let out = ok(
                        &s,
                        &[
                            "run",
                            "--rm",
                            "--network",
                            &net,
                            "busybox",
                            "sh",
                            "-c",
                            &script,
                        ],
                    );
                    assert_eq!(out.trim(), format!("net-{i}"));
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a run failed");
        }
        *stop.lock().unwrap() = true;
        for id in watcher.join().unwrap() {
            scope.add_id(id);
        }
        // The network's pre-attached namespaces (its pool, refilled by detached fillers after
        // the runs took theirs) are the network's, not the runs': once the fillers are done,
        // what is left is exactly the ready slots, at most the pool's size, each with its
        // namespace mount and its veth on the bridge.
        let pool_dir = s.root.path().join("net/pool").join(&net);
        let filler_running = || {
            std::fs::read_to_string(pool_dir.join("filling"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|o| o["pid"].as_i64())
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        };
        s.eventually(60, "the pool fillers are done", || !filler_running());
        let slots: Vec<serde_json::Value> = std::fs::read_dir(&pool_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        assert!(
            slots.len() <= 2,
            "more pool slots than the pool's size: {slots:#?}"
        );
        let slot_ns: Vec<String> = slots
            .iter()
            .map(|r| r["netns"].as_str().unwrap_or_default().to_string())
            .collect();
        let slot_veths: BTreeSet<String> = slots
            .iter()
            .flat_map(|r| {
                r["result"]["interfaces"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|i| i["sandbox"].as_str().unwrap_or_default().is_empty())
            .filter_map(|i| i["name"].as_str().map(String::from))
            .filter(|n| *n != bridge)
            .collect();
        let left: Vec<String> = settle_leaks(&scope, &before, 10)
            .into_iter()
            .filter(|l| {
                !slot_ns
                    .iter()
                    .any(|ns| l.starts_with(&format!("mount: {ns} (")))
            })
            .collect();
        assert!(
            left.is_empty(),
            "strata run --rm --network {net} {done}..{}: left behind:\n  {}",
            done + n,
            left.join("\n  ")
        );
        assert!(
            std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(),
            "no bridge {bridge} (the check of its ports would prove nothing)"
        );
        let ports: BTreeSet<String> = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            ports, slot_veths,
            "veth ports on {bridge} other than the pool's ready slots'"
        );
        let netns = listing(s.root.path().join("net/netns"));
        assert!(netns.is_empty(), "netns files left: {netns:?}");
        let att = listing(s.root.path().join("net/attachments"));
        assert!(att.is_empty(), "attachments left: {att:?}");
        let left = s.ps();
        assert!(left.is_empty(), "containers left: {left:#?}");
        done += n;
    }
    println!(
        "soak: strata run --rm --network (bridge) {total} lifecycles ({batch} at a time) in {:.1} s, nothing left after any batch (no veth on the bridge, no netns, no attachment)",
        t0.elapsed().as_secs_f64()
    );
    ok(&s, &["network", "rm", &net]);
    // (the guard's second `network rm` finds nothing and fails quietly)
}
