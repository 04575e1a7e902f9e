//! One entry point that feeds arbitrary bytes to every parser of this module that
//! sees outside input: `cgroupsPath`, the LinuxResources JSON of `update`
//! (device rules → eBPF program), and the /proc tables. A cargo-fuzz target calls
//! [`fuzz_one`]; a stable test runs it over a hostile corpus.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::{devices, mountinfo, path, resources};

/// Parses `data` every way this module parses outside input. Panics only on a bug.
pub fn fuzz_one(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(inner) = path::inner_path(Some(Path::new(text.as_ref())), "id") {
        assert!(!inner.components.is_empty());
        assert!(inner
            .components
            .iter()
            .all(|c| c != ".." && c != "." && !c.is_empty() && !c.contains('/')));
        let dir = path::anchor(
            Path::new("/sys/fs/cgroup"),
            "/",
            Some(text.as_ref()),
            &inner,
        );
        if let Some(dir) = dir {
            assert!(
                dir.starts_with("/sys/fs/cgroup"),
                "{} escaped the hierarchy",
                dir.display()
            );
        }
    }
    let _ = path::inner_path(None, text.as_ref());
    if let Ok(m) = mountinfo::parse_mountinfo(&text) {
        let _ = m.layout();
    }
    let _ = mountinfo::parse_proc_cgroup(&text);
    if let Ok(r) = serde_json::from_slice::<LinuxResources>(data) {
        let _ = resources::Memory::from(&r);
        let _ = resources::Cpu::from(&r);
        let _ = resources::cpuset(&r);
        let _ = resources::pids_limit(&r);
        let _ = resources::BlockIo::from(&r);
        if let Some(rules) = r.devices() {
            if let Ok(rules) = devices::parse_rules(rules) {
                let prog = devices::program(&rules);
                for (kind, access, major, minor) in [
                    (1, 2, 8, 0),
                    (2, 7, 1, 3),
                    (2, 1, 136, 4),
                    (3, 4, u32::MAX, 0),
                ] {
                    let v = devices::evaluate(&prog, kind, access, major, minor);
                    assert!(v <= 1);
                }
                for r in &rules {
                    let _ = r.v1_line();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHABET: &[u8] = b"/.:-{}[]\",0123456789 \n\\";

    /// Hostile and malformed inputs, then pseudo-random bytes and mutations of them.
    #[test]
    fn hostile_corpus() {
        let seeds: &[&[u8]] = &[
            b"",
            b"/",
            b"..",
            b"/../../../../etc/shadow",
            b"a/../../b",
            b"\0",
            b"//x//y/./z/..",
            b"31 23 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
            b"1 2 3 4 5 6 - cgroup x rw,cpu,memory,name=systemd",
            b"\\\\\\ - cgroup",
            b"0::/\n1:cpu:\n::::\n",
            br#"{"devices":[{"allow":true,"type":"c","major":-1,"minor":4294967295,"access":"rwm"}]}"#,
            br#"{"devices":[{"allow":false,"type":"p","access":"x"}]}"#,
            br#"{"devices":[{"allow":true,"access":""},{"allow":false,"type":"b","major":8,"access":"w"}]}"#,
            br#"{"memory":{"limit":-5,"swap":-9223372036854775808,"swappiness":18446744073709551615},"pids":{"limit":-9223372036854775808}}"#,
            br#"{"cpu":{"shares":18446744073709551615,"quota":-1,"cpus":"   ","mems":""}}"#,
            br#"{"blockIO":{"weight":65535,"throttleReadBpsDevice":[{"major":-1,"minor":-1,"rate":0}]}}"#,
        ];
        for s in seeds {
            fuzz_one(s);
        }
        // xorshift: deterministic, no extra dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize];
            let mut buf = seed.to_vec();
            for _ in 0..(next() % 8) {
                let pos = if buf.is_empty() {
                    0
                } else {
                    (next() % buf.len() as u64) as usize
                };
                match next() % 3 {
                    0 if !buf.is_empty() => buf[pos] = next() as u8,
                    1 => buf.insert(pos, ALPHABET[(next() % ALPHABET.len() as u64) as usize]),
                    _ if !buf.is_empty() => {
                        buf.remove(pos);
                    }
                    _ => {}
                }
            }
            fuzz_one(&buf);
        }
    }
}
