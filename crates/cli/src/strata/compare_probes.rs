//! Compatibility probes of `strata compare`: small shell snippets run inside each layer whose
//! outcome differs between a container (host kernel, restricted) and a VM (own kernel). The
//! results come back as `__strata_probe__ NAME RC DETAIL` lines on the workload's stdout; that
//! output is the workload's (untrusted), so the parser only accepts known probe names and
//! bounds what it keeps.

use serde::Serialize;

const PROBE_MARK: &str = "__strata_probe__";
/// Probe names the parser accepts, in display order.
pub const PROBES: &[&str] = &[
    "kernel",
    "load_module",
    "host_sysctl",
    "host_pids",
    "mount",
    "raw_socket",
    "kernel_log",
    "set_hostname",
];
const MAX_DETAIL: usize = 160;

/// One probe's outcome in one layer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeResult {
    pub name: String,
    /// `works` or `refused`.
    pub result: String,
    /// What the probe printed (error message, value), shortened.
    pub detail: String,
}

impl ProbeResult {
    pub fn works(&self) -> bool {
        self.result == "works"
    }
    /// The table cell: `works` / `refused (why)`.
    pub fn cell(&self) -> String {
        if self.works() || self.detail.is_empty() {
            self.result.clone()
        } else {
            // The reason is at the end of an error message ("...: Operation not permitted").
            let n = self.detail.chars().count();
            let d: String = self.detail.chars().skip(n.saturating_sub(40)).collect();
            let more = if n > 40 { "..." } else { "" };
            format!("{} ({more}{d})", self.result)
        }
    }
}

/// The probe script; `host_pid` is a host process (strata compare itself) the workload must not
/// be able to see.
pub fn script(host_pid: u32) -> String {
    format!(
        r#"p() {{ n=$1; shift; out=$("$@" 2>&1 </dev/null); rc=$?; printf '\n{PROBE_MARK} %s %s %s\n' "$n" "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-{MAX_DETAIL})"; }}
mkdir -p /tmp 2>/dev/null
p kernel uname -r
p load_module sh -c 'printf "\177ELF-not-a-module" > /tmp/.strata-probe.ko && insmod /tmp/.strata-probe.ko; r=$?; rm -f /tmp/.strata-probe.ko; exit $r'
p host_sysctl sh -c 'v=$(cat /proc/sys/vm/overcommit_ratio) && echo "$v" > /proc/sys/vm/overcommit_ratio && echo "vm.overcommit_ratio=$v written"'
p host_pids sh -c 'test "$(cat /proc/{host_pid}/comm 2>/dev/null)" = strata && echo "host pid {host_pid} visible" || {{ echo "host pid {host_pid} not visible; $(ls -d /proc/[0-9]* | wc -l) pids seen"; exit 1; }}'
p mount sh -c 'mkdir -p /tmp/.strata-probe-mnt && mount -t tmpfs strata-probe /tmp/.strata-probe-mnt && umount /tmp/.strata-probe-mnt && echo "tmpfs mounted"; r=$?; rmdir /tmp/.strata-probe-mnt 2>/dev/null; exit $r'
p raw_socket ping -c 1 -W 1 127.0.0.1
p kernel_log sh -c 'out=$(dmesg) && printf "%s\n" "$out" | tail -n 1'
p set_hostname sh -c 'h=$(hostname) && hostname "$h" && echo "hostname set"'
"#
    )
}

/// Classifies one probe line's exit code and message.
fn classify(name: &str, rc: i32, detail: &str) -> &'static str {
    let refused = |d: &str| {
        let d = d.to_ascii_lowercase();
        d.contains("not permitted")
            || d.contains("permission denied")
            || d.contains("read-only")
            || d.contains("function not implemented")
            // busybox's words for ENOSYS (a kernel without module support)
            || d.contains("does not support")
    };
    match name {
        // The file is not a module: reaching the module loader (ENOEXEC, "invalid module
        // format") means loading is allowed; EPERM/ENOSYS mean it is not.
        "load_module" if rc != 0 && !refused(detail) && !detail.is_empty() => "works",
        // ping fails on an unreachable loopback too; only a refused socket counts.
        "raw_socket" if rc != 0 && !refused(detail) => "works",
        _ if rc == 0 => "works",
        _ => "refused",
    }
}

/// Parses the probe lines out of the workload's output; unknown names, duplicates and malformed
/// lines are ignored.
pub fn parse(output: &str) -> Vec<ProbeResult> {
    let mut found: Vec<ProbeResult> = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.trim_start().strip_prefix(PROBE_MARK) else {
            continue;
        };
        let mut it = rest.trim_start().splitn(3, ' ');
        let (Some(name), Some(rc)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(name) = PROBES.iter().find(|p| **p == name) else {
            continue;
        };
        let Ok(rc) = rc.parse::<i32>() else { continue };
        if found.iter().any(|p| p.name == *name) {
            continue;
        }
        let detail: String = it
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_DETAIL)
            .collect();
        found.push(ProbeResult {
            name: name.to_string(),
            result: classify(name, rc, &detail).into(),
            detail,
        });
    }
    found.sort_by_key(|p| PROBES.iter().position(|n| *n == p.name));
    found
}

/// The kernel-version check: does the workload see the host's kernel?
pub fn kernel_is_host(seen: &str, host: &str) -> ProbeResult {
    ProbeResult {
        name: "own_kernel".into(),
        result: if !seen.is_empty() && seen != host {
            "works"
        } else {
            "refused"
        }
        .into(),
        detail: format!("sees {seen}, host {host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_probes() {
        let out = "junk\n__strata_probe__ kernel 0 6.1.192\n\n__strata_probe__ mount 1 mount: permission denied (are you root?)\n__strata_probe__ load_module 1 insmod: can't insert '/tmp/x.ko': invalid module format\n";
        let p = parse(out);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "kernel");
        assert_eq!(p[0].detail, "6.1.192");
        assert_eq!(p[1].name, "load_module");
        assert_eq!(p[1].result, "works");
        assert_eq!(p[2].result, "refused");
    }

    #[test]
    fn module_refused_by_eperm() {
        let p = parse(
            "__strata_probe__ load_module 1 insmod: can't insert 'x': Operation not permitted",
        );
        assert_eq!(p[0].result, "refused");
        let p = parse("__strata_probe__ load_module 1 insmod: can't insert 'x': kernel does not support requested operation");
        assert_eq!(p[0].result, "refused");
    }

    #[test]
    fn hostile_lines_are_ignored_or_bounded() {
        let long = "x".repeat(100_000);
        let out = format!(
            "__strata_probe__\n__strata_probe__ kernel\n__strata_probe__ evil 0 x\n__strata_probe__ mount notanumber x\n__strata_probe__ mount 99999999999999 x\n__strata_probe__ kernel 0 \u{1b}[31m{long}\n__strata_probe__ kernel 0 second\n"
        );
        let p = parse(&out);
        assert_eq!(p.len(), 1);
        assert!(p[0].detail.len() <= MAX_DETAIL);
        assert!(!p[0].detail.contains('\u{1b}'));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap stand-in for a fuzz target: pseudo-random lines built from the marker.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pick = [
                    PROBE_MARK, " ", "kernel", "0", "-1", "\n", "é", "\0", "mount",
                ];
                s.push_str(pick[(x % pick.len() as u64) as usize]);
            }
            for p in parse(&s) {
                assert!(PROBES.contains(&p.name.as_str()));
            }
        }
    }

    #[test]
    fn own_kernel() {
        assert!(kernel_is_host("6.1.192", "6.18.44").works());
        assert!(!kernel_is_host("6.18.44", "6.18.44").works());
        assert!(!kernel_is_host("", "6.18.44").works());
    }
}
