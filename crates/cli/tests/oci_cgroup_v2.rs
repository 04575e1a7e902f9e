//! strata-oci's cgroup v2 code against a real pure-v2 kernel. This host's cgroup2 mount has no
//! controllers (they are bound to v1), so the test boots strata's own UML guest kernel (which has
//! only cgroup2, guest/uml.config) with `strata run --vm`, mounts a static strata-oci and two
//! busybox bundles into it read-only, enables the controllers in the root's subtree_control as a
//! v2 host does, and runs the real runtime there: the container reads its own memory/pids/cpu/io
//! files, a device its rules deny cannot be opened (the eBPF device program), pause/resume set
//! cgroup.freeze, update changes memory.max, and delete leaves no cgroup directory.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cli_common::{output_timeout, text, Sandbox};
use serde_json::{json, Value};
use strata_testkit::{guest_kernel, repo, root_and_busybox, skip_or_fail};

/// Whether the ELF file has no program interpreter (static or static-pie): the guest has no
/// glibc, so a dynamically linked strata-oci cannot run there.
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, num) = (u16_at(0x36), u16_at(0x38));
    (0..num).all(|i| {
        let o = phoff + i * size;
        // PT_INTERP = 3
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

/// A statically linked strata-oci of the code under test, built with the same `cargo rustc`
/// flag as scripts/build-release.sh (debug profile, debuginfo stripped to keep the guest disk
/// small) into a target dir of its own: the running `cargo test` holds the lock of its own.
/// None (after a skip, a failure with STRATA_REQUIRE_E2E=1) when cargo cannot be run from here.
fn static_oci() -> Option<PathBuf> {
    let debug_dir = Path::new(env!("CARGO_BIN_EXE_strata-oci"))
        .parent()
        .unwrap();
    let target = debug_dir.parent().unwrap().join("oci-cgroup-v2-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = match Command::new(&cargo)
        .current_dir(repo())
        .args([
            "rustc",
            "--offline",
            "-q",
            "-p",
            "strata-cli",
            "--bin",
            "strata-oci",
        ])
        .arg("--target-dir")
        .arg(&target)
        .args([
            "--",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=debuginfo",
        ])
        .env_remove("CARGO_TARGET_DIR")
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            skip_or_fail(format!(
                "cannot run {cargo:?} to build a static strata-oci for the guest: {e}"
            ));
            return None;
        }
    };
    assert!(
        out.status.success(),
        "building a static strata-oci failed: {}",
        text(&out.stderr)
    );
    let bin = target.join("debug/strata-oci");
    assert!(
        is_static_elf(&bin),
        "{} is not statically linked",
        bin.display()
    );
    Some(bin)
}

/// A kernel dir holding only the guest kernel built from this tree's guest/uml.config, so the
/// VM boots that kernel and not whichever cached build is newest.
fn pinned_kernel_dir() -> tempfile::TempDir {
    let kernel = guest_kernel();
    let build = kernel.parent().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("strata-v2-kernels-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::symlink(build, dir.path().join(build.file_name().unwrap())).unwrap();
    dir
}

/// A busybox bundle (scripts/busybox-bundle.sh) in `dir` running `script`, with the v2
/// resources under test, CAP_MKNOD (to make a device node the rules deny) and a writable root.
fn bundle(dir: &Path, name: &str, script: &str) {
    let st = Command::new("bash")
        .arg(repo().join("scripts/busybox-bundle.sh"))
        .arg(dir)
        .args(["sh", "-c", script])
        .env("STRATA_OCI", env!("CARGO_BIN_EXE_strata-oci"))
        .status()
        .unwrap();
    assert!(st.success(), "busybox-bundle.sh failed");
    let path = dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["root"]["readonly"] = json!(false);
    c["linux"]["cgroupsPath"] = json!(format!("/strata-v2-{name}"));
    for set in ["bounding", "effective", "permitted"] {
        c["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_MKNOD"));
    }
    c["linux"]["resources"] = json!({
        "memory": {"limit": 64 << 20, "swap": 64 << 20},
        "pids": {"limit": 42},
        "cpu": {"shares": 512, "quota": 25000, "period": 50000},
        "blockIO": {"weight": 500},
        // Deny-all (runc's default), then an explicit deny of /dev/kmsg (1:11): not one of the
        // devices runc allows by default, so the node the workload makes cannot be opened.
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 11, "access": "rwm"}
        ]
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}

/// What the container prints about itself: its cgroup files (through its cgroup namespace its
/// cgroup is /sys/fs/cgroup) and whether the denied device opens.
const SHOW: &str = r#"echo "cgroup=$(cat /proc/self/cgroup)"
for f in memory.max memory.swap.max pids.max cpu.max cpu.weight io.weight cpuset.cpus; do
  if [ -e /sys/fs/cgroup/$f ]; then echo "$f=$(cat /sys/fs/cgroup/$f | tr '\n' ' ' | sed 's/ $//')"; else echo "$f=absent"; fi
done
mknod /dev/kmsg2 c 1 11 && echo mknod=ok
if head -c 1 /dev/kmsg2 >/dev/null 2>/tmp/err; then echo open=allowed; else echo "open=$(cat /tmp/err)"; fi
if head -c 1 /dev/zero >/dev/null; then echo zero=allowed; fi"#;

/// What runs in the guest: the v2 host set-up, then strata-oci.
const GUEST: &str = r#"set -e
O=/x/strata-oci; R=/tmp/r; G=/sys/fs/cgroup
# The workload's /sys/fs/cgroup is read-only, as a container's is: mount the hierarchy writable
# over it, as a v2 host has it.
if grep -q " $G cgroup2 " /proc/mounts; then mount -o remount,rw $G; else mount -t cgroup2 cgroup2 $G; fi
echo "controllers=$(cat $G/cgroup.controllers)"
# Controllers can only be enabled for children of a cgroup with no processes of its own (the
# root is exempt): when this shell sits in a cgroup namespace, move everyone to a leaf first.
if ! echo +pids > $G/cgroup.subtree_control 2>/dev/null; then
  mkdir -p $G/init
  for p in $(cat $G/cgroup.procs); do echo $p > $G/init/cgroup.procs 2>/dev/null || true; done
fi
for c in $(cat $G/cgroup.controllers); do echo +$c > $G/cgroup.subtree_control || echo "enable.$c=failed"; done
echo "subtree=$(cat $G/cgroup.subtree_control)"
# The image's root disk is nearly full: the bundles (writable roots) and state live in a tmpfs.
mount -t tmpfs -o size=32m tmpfs /tmp
cp -a /x/show /x/long /x/cpuset /tmp/
$O --root $R run --bundle /tmp/show show
echo "show.left=$(test -e $G/strata-v2-show && echo yes || echo no)"
if $O --root $R run --bundle /tmp/cpuset cpuset >/tmp/cpuset.out 2>&1; then echo cpuset.run=ok; else echo "cpuset.run=failed $?"; fi
echo "cpuset.err=$(tr '\n' ' ' < /tmp/cpuset.out)"
echo "cpuset.left=$(test -e $G/strata-v2-cpuset && echo yes || echo no)"
echo "cpuset.state=$(ls $R | tr '\n' ' ')"
$O --root $R create --bundle /tmp/long long </dev/null >/dev/null 2>&1
$O --root $R start long
L=$G/strata-v2-long
echo "long.memory.max=$(cat $L/memory.max)"
echo "long.procs=$(wc -l < $L/cgroup.procs)"
$O --root $R pause long
echo "paused.freeze=$(cat $L/cgroup.freeze)"
echo "paused.$(grep frozen $L/cgroup.events | tr ' ' '=')"
echo "paused.$($O --root $R state long | grep -o '"status": *"[a-z]*"' | tr -d '" ' | tr : =)"
$O --root $R resume long
echo "resumed.freeze=$(cat $L/cgroup.freeze)"
echo "resumed.$(grep frozen $L/cgroup.events | tr ' ' '=')"
$O --root $R update --memory 100663296 --pids-limit 77 long
echo "updated.memory.max=$(cat $L/memory.max)"
echo "updated.pids.max=$(cat $L/pids.max)"
$O --root $R delete --force long
echo "long.left=$(test -e $L && echo yes || echo no)"
echo "state.left=$(ls $R | tr '\n' ' ')"
echo done"#;

#[test]
fn v2_resources_take_effect_in_a_pure_v2_guest() {
    if !root_and_busybox() {
        return;
    }
    let Some(oci) = static_oci() else {
        return;
    };
    let kernels = pinned_kernel_dir();
    let share = tempfile::Builder::new()
        .prefix("strata-v2-share-")
        .tempdir()
        .unwrap();
    std::fs::copy(&oci, share.path().join("strata-oci")).unwrap();
    bundle(&share.path().join("show"), "show", SHOW);
    bundle(
        &share.path().join("long"),
        "long",
        "while true; do sleep 1; done",
    );
    // A controller the kernel does not have (cpuset) is refused, naming it, leaving nothing.
    let cpuset = share.path().join("cpuset");
    bundle(&cpuset, "cpuset", "true");
    let mut c: Value =
        serde_json::from_slice(&std::fs::read(cpuset.join("config.json")).unwrap()).unwrap();
    c["linux"]["resources"]["cpu"]["cpus"] = json!("0");
    std::fs::write(cpuset.join("config.json"), c.to_string()).unwrap();
    let s = Sandbox::new("vm");
    let mut c = s.cmd();
    c.env("STRATA_KERNEL_DIR", kernels.path())
        .args(["run", "--vm", "--rm", "-v"])
        .arg(format!("{}:/x:ro", share.path().display()))
        .args(["busybox", "sh", "-c", GUEST]);
    let o = output_timeout(c, None, Duration::from_secs(240));
    let out = text(&o.stdout);
    let err = text(&o.stderr);
    eprintln!("guest output:\n{out}{err}");
    assert!(o.status.success(), "guest script failed:\n{out}\n{err}");
    let kv: std::collections::HashMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| {
        *kv.get(k)
            .unwrap_or_else(|| panic!("{k} not printed:\n{out}\n{err}"))
    };
    // The guest is pure v2 with the controllers guest/uml.config builds (no cpuset: UML 6.1 has
    // no SMP, which CONFIG_CPUSETS needs).
    let controllers: Vec<&str> = get("controllers").split(' ').collect();
    for want in ["cpu", "io", "memory", "pids"] {
        assert!(controllers.contains(&want), "{want} missing:\n{out}");
        assert!(
            get("subtree").split(' ').any(|c| c == want),
            "{want} not enabled:\n{out}"
        );
    }
    // The container sees its own cgroup (cgroup namespace) with the limits of config.json.
    assert_eq!(get("cgroup"), "0::/", "{out}");
    assert_eq!(get("memory.max"), (64u64 << 20).to_string(), "{out}");
    // swap == limit means no swap; the guest kernel has no swap at all (CONFIG_SWAP=n), so
    // there is no memory.swap.max to write.
    assert!(matches!(get("memory.swap.max"), "absent" | "0"), "{out}");
    assert_eq!(get("pids.max"), "42", "{out}");
    assert_eq!(get("cpu.max"), "25000 50000", "{out}");
    // shares 512 → weight 1 + (512 - 2) * 9999 / 262142 (runc's conversion).
    assert_eq!(get("cpu.weight"), "20", "{out}");
    // blkio weight 500 → io weight 1 + (500 - 10) * 9999 / 990.
    assert_eq!(get("io.weight"), "default 4950", "{out}");
    assert_eq!(get("cpuset.cpus"), "absent", "{out}");
    // The device rules are an eBPF program: mknod is allowed ("m" for all, as runc), opening
    // the denied device is not, while /dev/zero still is.
    assert_eq!(get("mknod"), "ok", "{out}");
    assert!(
        get("open").contains("Operation not permitted"),
        "denied device opened:\n{out}"
    );
    assert_eq!(get("zero"), "allowed", "{out}");
    assert_eq!(get("show.left"), "no", "{out}");
    assert!(get("cpuset.run").starts_with("failed"), "{out}");
    assert!(get("cpuset.err").contains("cpuset"), "{out}");
    assert_eq!(get("cpuset.left"), "no", "{out}");
    assert_eq!(get("cpuset.state"), "", "{out}");
    // Lifecycle on v2: limits, the freezer, update, delete.
    assert_eq!(get("long.memory.max"), (64u64 << 20).to_string(), "{out}");
    assert!(get("long.procs").trim() != "0", "{out}");
    assert_eq!(get("paused.freeze"), "1", "{out}");
    assert_eq!(get("paused.frozen"), "1", "{out}");
    assert_eq!(get("paused.status"), "paused", "{out}");
    assert_eq!(get("resumed.freeze"), "0", "{out}");
    assert_eq!(get("resumed.frozen"), "0", "{out}");
    assert_eq!(get("updated.memory.max"), "100663296", "{out}");
    assert_eq!(get("updated.pids.max"), "77", "{out}");
    assert_eq!(get("long.left"), "no", "{out}");
    assert_eq!(get("state.left"), "", "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    s.assert_nothing_left(&[]);
}
