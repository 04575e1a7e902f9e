//! Bad input → a clear error, non-zero exit, and nothing left behind (no state dir, mount,
//! cgroup or process).

mod common;

use common::*;
use serde_json::json;

fn create_fails(oci: &Oci, b: &Bundle, id: &str, expect: &str) {
    let err = oci.fails(&["create", "--bundle", b.path().to_str().unwrap(), id]);
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert_clean(oci, b, id);
}

#[test]
fn malformed_missing_config_and_rootfs() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("bad");
    let b = Bundle::sh(&id, "true");
    std::fs::write(b.path().join("config.json"), b"{ not json").unwrap();
    create_fails(&oci, &b, &id, "parse config.json");
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    create_fails(&oci, &b, &id, "config.json");
    b.save();
    std::fs::remove_dir_all(b.rootfs()).unwrap();
    create_fails(&oci, &b, &id, "rootfs");
    // The root dir must not have gained a state dir for any of these.
    assert_eq!(
        std::fs::read_dir(oci.root.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn invalid_spec_fields() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("badns");
    let mut b = Bundle::sh(&id, "true");
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bogus"}))
    });
    create_fails(&oci, &b, &id, "bogus");
    b.edit(|c| {
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "pid"}, {"type": "mount"}])
    });
    create_fails(&oci, &b, &id, "listed twice");
    b.edit(|c| {
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
        c["process"]["cwd"] = json!("relative");
    });
    create_fails(&oci, &b, &id, "not an absolute path");
    b.edit(|c| {
        c["process"]["cwd"] = json!("/");
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "rel", "type": "tmpfs", "source": "tmpfs"}));
    });
    create_fails(&oci, &b, &id, "not an absolute path");
}

#[test]
fn invalid_and_duplicate_ids() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("dup");
    let b = Bundle::sh(&id, "exec sleep 1000");
    let bp = b.path().to_str().unwrap();
    let long = "a".repeat(1024);
    for bad in ["../x", "", &long, ".", "..", "a/b"] {
        let err = oci.fails(&["create", "--bundle", bp, bad]);
        assert!(err.contains("invalid id format"), "{bad:?}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(oci.root.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert!(!oci.root.path().parent().unwrap().join("x").exists());
    oci.ok(&["create", "--bundle", bp, &id]);
    let err = oci.fails(&["create", "--bundle", bp, &id]);
    assert!(
        err.contains(&format!("container with id exists: {id}")),
        "{err}"
    );
    // The first container is untouched by the failed duplicate.
    assert_eq!(oci.status(&id), "created");
    oci.ok(&["start", &id]);
    let err = oci.fails(&["start", &id]);
    assert!(
        err.contains("cannot start an already running container"),
        "{err}"
    );
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn missing_executable_fails_create_and_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("noexe");
    let b = Bundle::new(&id, &["no-such-binary", "arg"]);
    create_fails(
        &oci,
        &b,
        &id,
        "exec: \"no-such-binary\": executable file not found in $PATH",
    );
    let err = oci.fails(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(err.contains("executable file not found"), "{err}");
    assert_clean(&oci, &b, &id);
}

#[test]
fn symlinked_mount_target_stays_in_rootfs() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("symlink");
    let host_victim = tempfile::tempdir().unwrap();
    let mut b = Bundle::sh(
        &id,
        "ls /evil; cat /proc/self/mountinfo | grep -c ' /escape '",
    );
    // /escape in the image is a symlink to a host directory: the tmpfs must land inside the
    // rootfs (at rootfs/<host path>), never on the host directory itself.
    std::os::unix::fs::symlink(host_victim.path(), b.rootfs().join("escape")).unwrap();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"}));
        c["process"]["args"] = json!(["sh", "-c", "touch /escape/sub/created-inside && echo ok"]);
    });
    let out = oci.output_of(&b, &id);
    assert_eq!(out, "ok\n");
    assert!(
        !host_victim.path().join("sub").exists(),
        "mount target created on the host"
    );
    assert!(b
        .rootfs()
        .join(host_victim.path().strip_prefix("/").unwrap())
        .join("sub")
        .is_dir());
    assert_clean(&oci, &b, &id);
}

#[test]
fn commands_on_unknown_container() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    for cmd in [
        vec!["start"],
        vec!["state"],
        vec!["kill"],
        vec!["delete"],
        vec!["pause"],
        vec!["resume"],
        vec!["ps"],
        vec!["events", "--stats"],
        vec!["exec"],
    ] {
        let mut args = cmd.clone();
        args.push("nope-404");
        if cmd == ["exec"] {
            args.push("true");
        }
        let err = oci.fails(&args);
        assert!(
            err.contains("container \"nope-404\" does not exist"),
            "{cmd:?}: {err}"
        );
    }
}

/// Cgroups are made after the init is cloned (it builds its rootfs meanwhile): a resource the
/// kernel refuses (a cpuset of CPUs this host lacks) fails `create` and `run` with the cgroup
/// file named, and the cloned init, its state dir and every cgroup directory are gone.
#[test]
fn refused_cgroup_resource_after_the_clone_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("badcpuset");
    let mut b = Bundle::sh(&id, "true");
    b.edit(|c| c["linux"]["resources"]["cpu"] = json!({"cpus": "4000"}));
    let cpuset_dir =
        std::path::Path::new("/sys/fs/cgroup/cpuset").join(format!("strata-test-{id}"));
    create_fails(&oci, &b, &id, "cpuset.cpus");
    assert!(!cpuset_dir.exists(), "{} left behind", cpuset_dir.display());
    let err = oci.fails(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(err.contains("cpuset.cpus"), "{err}");
    assert_clean(&oci, &b, &id);
    assert!(!cpuset_dir.exists(), "{} left behind", cpuset_dir.display());
}
