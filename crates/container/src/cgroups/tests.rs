//! Unit tests of path resolution over fixture mount tables (v1, v2, hybrid).

use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_OWN: &str = "9:name=systemd:/\n4:memory:/process_api/cc5a\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n5:devices:/\n6:freezer:/\n0::/\n";

const V1: &str = "\
26 25 0:22 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
29 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
";
const V1_OWN: &str = "4:devices:/user.slice\n3:memory:/user.slice\n2:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n";

const V2: &str = "27 18 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
const V2_OWN: &str = "0::/user.slice/user-0.slice/session-3.scope\n";

fn resolve(mountinfo: &str, own: &str, p: Option<&str>, id: &str) -> Cgroup {
    let inner = path::inner_path(p.map(Path::new), id).unwrap();
    Cgroup::resolve_from(mountinfo, Some(own), &inner).unwrap()
}

#[test]
fn hybrid_absolute_path_everywhere_including_unified() {
    let cg = resolve(HYBRID, HYBRID_OWN, Some("/docker/abc"), "x");
    assert_eq!(cg.layout(), Layout::Hybrid);
    assert_eq!(
        cg.v1_path("memory").unwrap(),
        Path::new("/sys/fs/cgroup/memory/docker/abc")
    );
    assert_eq!(
        cg.v1_path("cpuacct").unwrap(),
        Path::new("/sys/fs/cgroup/cpuacct/docker/abc")
    );
    assert_eq!(
        cg.v1_path("name=systemd").unwrap(),
        Path::new("/sys/fs/cgroup/systemd/docker/abc")
    );
    assert_eq!(
        cg.unified_path().unwrap(),
        Path::new("/sys/fs/cgroup/unified/docker/abc")
    );
    assert_eq!(cg.paths().len(), 8);
    assert!(cg.v1_path("pids").is_none());
}

#[test]
fn hybrid_relative_path_under_own_cgroup_per_controller() {
    let cg = resolve(HYBRID, HYBRID_OWN, Some("strata/c1"), "x");
    assert_eq!(
        cg.v1_path("memory").unwrap(),
        Path::new("/sys/fs/cgroup/memory/process_api/cc5a/strata/c1")
    );
    assert_eq!(
        cg.v1_path("cpu").unwrap(),
        Path::new("/sys/fs/cgroup/cpu/strata/c1")
    );
    assert_eq!(
        cg.unified_path().unwrap(),
        Path::new("/sys/fs/cgroup/unified/strata/c1")
    );
}

#[test]
fn missing_path_is_slash_id() {
    let cg = resolve(HYBRID, HYBRID_OWN, None, "c9");
    assert_eq!(
        cg.v1_path("devices").unwrap(),
        Path::new("/sys/fs/cgroup/devices/c9")
    );
}

#[test]
fn v1_comounted() {
    let cg = resolve(V1, V1_OWN, Some("k/c"), "x");
    assert_eq!(cg.layout(), Layout::V1);
    assert_eq!(cg.v1_path("cpu"), cg.v1_path("cpuacct"));
    assert_eq!(
        cg.v1_path("cpu").unwrap(),
        Path::new("/sys/fs/cgroup/cpu,cpuacct/user.slice/k/c")
    );
    assert_eq!(
        cg.v1_path("name=systemd").unwrap(),
        Path::new("/sys/fs/cgroup/systemd/user.slice/session-2.scope/k/c")
    );
    assert!(cg.unified_path().is_none());
}

#[test]
fn v2_relative_goes_under_parent_of_own() {
    let cg = resolve(V2, V2_OWN, Some("machine/c1"), "x");
    assert_eq!(cg.layout(), Layout::V2);
    assert_eq!(
        cg.unified_path().unwrap(),
        Path::new("/sys/fs/cgroup/user.slice/user-0.slice/machine/c1")
    );
    let cg = resolve(V2, V2_OWN, Some("/machine/c1"), "x");
    assert_eq!(
        cg.unified_path().unwrap(),
        Path::new("/sys/fs/cgroup/machine/c1")
    );
    assert!(cg.v1.is_empty());
}

#[test]
fn v1_without_devices_is_refused() {
    let mi = "29 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let inner = path::inner_path(None, "c").unwrap();
    assert!(matches!(
        Cgroup::resolve_from(mi, None, &inner),
        Err(CgroupError::MandatoryControllerMissing { .. })
    ));
}

#[test]
fn relative_without_own_entry_is_an_error() {
    let inner = path::inner_path(Some(Path::new("rel")), "c").unwrap();
    let err = Cgroup::resolve_from(V1, Some("0::/\n"), &inner).unwrap_err();
    assert!(matches!(err, CgroupError::NoOwnCgroup { .. }), "{err}");
}

#[test]
fn serde_round_trip_keeps_everything() {
    let mut cg = resolve(HYBRID, HYBRID_OWN, Some("/a/b"), "x");
    cg.created = vec![
        PathBuf::from("/sys/fs/cgroup/memory/a"),
        PathBuf::from("/sys/fs/cgroup/memory/a/b"),
    ];
    let json = serde_json::to_string(&cg).unwrap();
    let back: Cgroup = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cg);
    assert!(serde_json::from_str::<Cgroup>("{\"layout\":\"v3\"}").is_err());
}

#[test]
fn v2_at_checks_the_path() {
    assert!(Cgroup::v2_at(Path::new("/sys/fs/cgroup/unified"), Path::new("/tmp/x")).is_err());
    assert!(Cgroup::v2_at(
        Path::new("/sys/fs/cgroup/unified"),
        Path::new("/sys/fs/cgroup/unified")
    )
    .is_err());
    assert!(Cgroup::v2_at(
        Path::new("/sys/fs/cgroup/unified"),
        Path::new("/sys/fs/cgroup/unified/x")
    )
    .is_ok());
}

#[test]
fn default_devices_are_appended_after_the_spec_rules() {
    let r: LinuxResources =
        serde_json::from_str(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).unwrap();
    let r = with_runc_default_devices(Some(&r), &[]);
    let rules = devices::parse_rules(r.devices().as_ref().unwrap()).unwrap();
    assert_eq!(rules[0].v1_line(), "a");
    assert_eq!(rules[1].v1_line(), "c *:* m");
    assert!(rules.iter().any(|r| r.v1_line() == "c 1:3 rwm"));
    assert!(rules.iter().any(|r| r.v1_line() == "c 136:* rwm"));
    let none = with_runc_default_devices(None, &[]);
    assert_eq!(none.devices().as_ref().unwrap().len(), 11);
}

#[test]
fn docker_update_json_parses() {
    let r: LinuxResources = serde_json::from_str(
        r#"{"memory":{"limit":67108864,"reservation":0,"swap":67108864,"kernel":0},"cpu":{"shares":512,"quota":0,"period":0},"pids":{"limit":50},"blockIO":{"weight":0}}"#,
    )
    .unwrap();
    let m = resources::Memory::from(&r).unwrap();
    assert_eq!((m.limit, m.reservation, m.swap), (67108864, 0, 67108864));
    let c = resources::Cpu::from(&r).unwrap();
    assert_eq!((c.shares, c.quota, c.period), (512, 0, 0));
    assert_eq!(resources::pids_limit(&r).as_deref(), Some("50"));
    assert!(
        resources::BlockIo::from(&r).is_none(),
        "weight 0 means unchanged"
    );
}
