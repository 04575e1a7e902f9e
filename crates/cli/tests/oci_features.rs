//! config.json features checked from INSIDE the container with busybox shell scripts:
//! namespaces, identity, capabilities, rlimits, mounts, devices, masked/readonly paths,
//! sysctls, cgroup limits.

mod common;

use common::*;
use serde_json::json;

/// The value of a `Key:\tvalue` line of /proc/self/status output.
fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
        .to_string()
}

#[test]
fn identity_caps_rlimits_nnp_oom() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("ident");
    let mut b = Bundle::sh(&id, "cat /proc/self/status; umask; pwd; echo FOO=$FOO; grep 'Max open files' /proc/self/limits; cat /proc/self/oom_score_adj");
    b.edit(|c| {
        let p = &mut c["process"];
        p["user"] = json!({"uid": 1234, "gid": 2345, "additionalGids": [11, 12], "umask": 63});
        p["cwd"] = json!("/tmp");
        p["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
        p["noNewPrivileges"] = json!(true);
        p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]);
        p["oomScoreAdj"] = json!(500);
        let caps = json!(["CAP_CHOWN", "CAP_NET_RAW"]);
        p["capabilities"] = json!({"bounding": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"], "effective": caps,
                                   "permitted": caps, "inheritable": caps, "ambient": ["CAP_NET_RAW"]});
    });
    let out = oci.output_of(&b, &id);
    assert_eq!(status_field(&out, "Uid"), "1234\t1234\t1234\t1234");
    assert_eq!(status_field(&out, "Gid"), "2345\t2345\t2345\t2345");
    assert_eq!(status_field(&out, "Groups"), "11 12");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    // CAP_CHOWN = bit 0, CAP_KILL = 5, CAP_NET_RAW = 13.
    assert_eq!(
        status_field(&out, "CapBnd"),
        format!("{:016x}", (1u64 << 0) | (1 << 5) | (1 << 13))
    );
    // A non-root uid keeps only its ambient set across execve (permitted/effective = ambient).
    assert_eq!(status_field(&out, "CapEff"), format!("{:016x}", 1u64 << 13));
    assert_eq!(status_field(&out, "CapPrm"), format!("{:016x}", 1u64 << 13));
    assert_eq!(
        status_field(&out, "CapInh"),
        format!("{:016x}", (1u64 << 0) | (1 << 13))
    );
    assert_eq!(status_field(&out, "CapAmb"), format!("{:016x}", 1u64 << 13));
    assert!(out.contains("\n0077\n/tmp\nFOO=bar baz\n"), "{out}");
    let limits = out
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        limits.split_whitespace().collect::<Vec<_>>()[3..5],
        ["321", "654"]
    );
    assert_eq!(out.lines().last().unwrap(), "500");
    assert_clean(&oci, &b, &id);
}

#[test]
fn namespaces_hostname_domainname_pid1() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("ns");
    let mut b = Bundle::sh(&id, "hostname; cat /proc/sys/kernel/domainname; echo pid=$$; ls /sys/class/net; for n in ipc mnt net pid uts cgroup; do readlink /proc/self/ns/$n; done");
    b.edit(|c| {
        c["hostname"] = json!("box-7");
        c["domainname"] = json!("example.test");
    });
    let out = oci.output_of(&b, &id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box-7");
    assert_eq!(lines[1], "example.test");
    assert_eq!(lines[2], "pid=1");
    assert_eq!(lines[3], "lo", "a new network namespace has only lo: {out}");
    for (i, n) in ["ipc", "mnt", "net", "pid", "uts", "cgroup"]
        .iter()
        .enumerate()
    {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert_ne!(
            lines[4 + i],
            host.to_str().unwrap(),
            "{n} namespace is the host's"
        );
    }
    assert_clean(&oci, &b, &id);
}

#[test]
fn user_namespace_with_mappings() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("userns");
    let mut b = Bundle::sh(&id, "cat /proc/self/uid_map /proc/self/gid_map; id -u; ls -ln /dev/null; echo x > /dev/null && echo null-ok");
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    // The rootfs must be usable by the mapped root.
    std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.path())
        .status()
        .unwrap();
    let out = oci.output_of(&b, &id);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &words[..6],
        ["0", "100000", "65536", "0", "100000", "65536"],
        "{out}"
    );
    assert_eq!(words[6], "0");
    assert!(out.contains("null-ok"), "{out}");
    assert_clean(&oci, &b, &id);
}

#[test]
fn mounts_devices_masked_readonly_sysctl() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("mnt");
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("hello"), "from-host\n").unwrap();
    let script = r#"
grep -E ' /data | /scratch | / ' /proc/self/mountinfo | awk '{print $5, $6}'
cat /data/hello
echo x > /data/new 2>/dev/null && echo data-writable || echo data-ro
echo x > /scratch/f && echo scratch-ok
stat -c '%a' /scratch
echo x > /rootfile 2>/dev/null && echo root-writable || echo root-ro
cat /proc/kcore 2>/dev/null | head -c 1 | wc -c
ls /proc/acpi 2>/dev/null | wc -l
echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo procsys-writable || echo procsys-ro
cat /proc/sys/net/ipv4/ip_forward
for d in null zero full random urandom tty mydev; do ls -l /dev/$d | awk '{print $1, $5, $6, $NF}'; done
for l in fd stdin ptmx; do readlink /dev/$l; done
head -c 4 /dev/zero | wc -c
"#;
    let mut b = Bundle::sh(&id, script);
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "bind", "source": host_dir.path(), "options": ["rbind", "ro", "nosuid"]}));
        mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nodev", "mode=1777", "size=1m"]}));
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        c["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 3, "fileMode": 432, "uid": 0, "gid": 0}]);
    });
    let out = oci.output_of(&b, &id);
    let lines: Vec<&str> = out.lines().collect();
    let mnt = |m: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{m} ")))
            .unwrap_or_else(|| panic!("{m} missing: {out}"))
            .to_string()
    };
    assert!(mnt("/").contains("ro"), "{out}");
    assert!(
        mnt("/data").contains("ro") && mnt("/data").contains("nosuid"),
        "{out}"
    );
    assert!(mnt("/scratch").contains("nodev"), "{out}");
    let rest: Vec<&str> = lines
        .iter()
        .skip_while(|l| l.starts_with('/'))
        .copied()
        .collect();
    assert_eq!(rest[0], "from-host");
    assert_eq!(rest[1], "data-ro");
    assert_eq!(rest[2], "scratch-ok");
    assert_eq!(rest[3], "1777");
    assert_eq!(rest[4], "root-ro");
    assert_eq!(rest[5], "0", "masked /proc/kcore readable: {out}");
    assert_eq!(rest[6], "0", "masked /proc/acpi not empty: {out}");
    assert_eq!(rest[7], "procsys-ro");
    assert_eq!(rest[8], "1", "sysctl not applied: {out}");
    let devs = &rest[9..16];
    for (i, (name, maj, min)) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            devs[i],
            format!("crw-rw-rw- {maj}, {min} /dev/{name}"),
            "{out}"
        );
    }
    assert_eq!(devs[6], "crw-rw---- 1, 3 /dev/mydev");
    assert_eq!(
        &rest[16..19],
        ["/proc/self/fd", "/proc/self/fd/0", "pts/ptmx"]
    );
    assert_eq!(rest[19], "4");
    assert!(!host_dir.path().join("new").exists());
    assert_clean(&oci, &b, &id);
}

#[test]
fn cgroup_limits_seen_inside() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("cg");
    let mut b = Bundle::sh(&id, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares; cat /proc/self/cgroup | grep memory");
    b.edit(|c| {
        c["linux"]["resources"]["memory"] = json!({"limit": 100663296});
        c["linux"]["resources"]["pids"] = json!({"limit": 42});
        c["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000, "shares": 256});
    });
    let out = oci.output_of(&b, &id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["100663296", "42", "50000", "256"], "{out}");
    // With a cgroup namespace, the container's cgroup is its root.
    assert!(lines[4].ends_with(":memory:/"), "{out}");
    assert_clean(&oci, &b, &id);
}

#[test]
fn no_pivot_and_join_network_namespace() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    // A holder container with its own network namespace...
    let holder = unique_id("nsholder");
    let hb = Bundle::sh(&holder, "exec sleep 1000");
    oci.ok(&[
        "run",
        "-d",
        "--bundle",
        hb.path().to_str().unwrap(),
        &holder,
    ]);
    let st: serde_json::Value = serde_json::from_str(&oci.ok(&["state", &holder])).unwrap();
    let hpid = st["pid"].as_i64().unwrap();
    let want = std::fs::read_link(format!("/proc/{hpid}/ns/net")).unwrap();
    // ...joined by path by a second container started with --no-pivot.
    let id = unique_id("join");
    let mut b = Bundle::sh(&id, "readlink /proc/self/ns/net; ls /");
    b.edit(|c| {
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = json!(format!("/proc/{hpid}/ns/net"));
            }
        }
    });
    let out = oci.ok(&[
        "run",
        "--no-pivot",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    assert_eq!(out.lines().next().unwrap(), want.to_str().unwrap());
    assert!(out.contains("\nbin\n"), "{out}");
    assert_clean(&oci, &b, &id);
    oci.ok(&["delete", "--force", &holder]);
    assert_clean(&oci, &hb, &holder);
}

#[test]
fn time_namespace_with_offsets() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("timens");
    let mut b = Bundle::sh(
        &id,
        "cut -d' ' -f1 /proc/uptime; readlink /proc/self/ns/time",
    );
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1000000, "nanosecs": 0}});
    });
    let out = oci.output_of(&b, &id);
    let mut lines = out.lines();
    let uptime: f64 = lines.next().unwrap().parse().unwrap();
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uptime - host > 999_000.0,
        "boottime offset not applied: {out}"
    );
    let host_ns = std::fs::read_link("/proc/self/ns/time").unwrap();
    assert_ne!(lines.next().unwrap(), host_ns.to_str().unwrap());
    assert_clean(&oci, &b, &id);
}
