//! Where a VM's start time goes, phase by phase, measured by its keeper with the monotonic
//! clock (no system call: `Instant::now` reads the vDSO) and stored in the keeper's state.json;
//! `strata inspect` shows it (`Vm.StartPhases`), `strata-oci state` as an annotation, and
//! bench/vm-boot.sh prints it per platform.
//!
//! Phases, in order (each ends where the next begins; names are stable, benches parse them):
//! - `keeper-setup`: keeper forked → the platform boot begins (platform, guest config, socket)
//! - `jail`: COW file, cgroup, namespaces and mounts of the jail, until the VM process
//!   (UML kernel, QEMU) has executed
//! - `kernel-boot`: the VM process executed → the agent began, i.e. the guest kernel's boot
//!   (host time, less the agent's own share below)
//! - `agent-setup`: the agent began → its Hello (guest mounts, modules, the channel), by the
//!   guest's clock as the agent reports it; absent when the agent does not report it
//!   (then `kernel-boot` runs to the Hello)
//! - `rootfs`: Create sent → Created (root disk, overlay, config.json mounts in the guest)
//! - `workload-execve`: Start sent → Started (the agent's spawn until the workload's execve
//!   took effect)
//!
//! A VM taken from the warm pool (vm_pool.rs) has `warm-take` (the hand-over: disks, cgroup)
//! and `warm-hello` (→ its agent's Hello) where a cold boot has `jail`, `kernel-boot` and
//! `agent-setup`.
//!
//! `total_ms` is keeper forked → Started, less the time a held workload (strata-oci create)
//! waited for `start`. When a hung boot was retried, the phases are the last attempt's and the
//! total includes the earlier ones (`boot_attempts` says how many), so the phases always sum to
//! at most the total.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One phase of a VM's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// Milliseconds, to the microsecond.
    pub ms: f64,
}

/// A VM's start, phase by phase (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StartPhases {
    pub phases: Vec<Phase>,
    pub total_ms: f64,
    /// Attempts it took: a guest that did not answer is booted again (up to three boots), and a
    /// failed warm hand-over is followed by a cold boot.
    pub boot_attempts: u32,
    /// A VM from the warm pool: how long its agent's rehearsal of a start took when the VM was
    /// booted (guest clock, as the agent reports it), long before this start: in neither the
    /// phases nor the total. None: a cold VM, or one that did not rehearse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal_ms: Option<f64>,
}

impl StartPhases {
    /// `name=1.2ms ... total=3.4ms`, for places that take one line (annotations, logs).
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{}={:.1}ms", p.name, p.ms))
            .collect();
        parts.push(format!("total={:.1}ms", self.total_ms));
        if self.boot_attempts > 1 {
            parts.push(format!("boot_attempts={}", self.boot_attempts));
        }
        if let Some(r) = self.rehearsal_ms {
            parts.push(format!("(rehearsed {r:.1}ms at pool boot)"));
        }
        parts.join(" ")
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The keeper's stopwatch: `mark(name)` ends phase `name` now.
#[derive(Debug)]
pub struct PhaseClock {
    t0: Instant,
    last: Instant,
    phases: Vec<Phase>,
    /// Time not counted (a held workload waiting for `start`).
    excluded: Duration,
    attempts: u32,
    rehearsal: Option<Duration>,
}

impl PhaseClock {
    /// Starts the clock (the keeper was just forked).
    pub fn start() -> PhaseClock {
        PhaseClock::start_at(Instant::now())
    }

    fn start_at(t0: Instant) -> PhaseClock {
        PhaseClock {
            t0,
            last: t0,
            phases: Vec::new(),
            excluded: Duration::ZERO,
            attempts: 0,
            rehearsal: None,
        }
    }

    /// Ends phase `name` now.
    pub fn mark(&mut self, name: &str) {
        self.mark_at(name, Instant::now());
    }

    fn mark_at(&mut self, name: &str, now: Instant) {
        let d = now.saturating_duration_since(self.last);
        self.last = now;
        self.phases.push(Phase {
            name: name.to_string(),
            ms: ms(d),
        });
    }

    /// Ends the boot → Hello interval now, split into `kernel-boot` and `agent-setup` with
    /// the agent's own account of its set-up (guest clock; clamped to the measured interval,
    /// since the guest controls it).
    pub fn mark_hello(&mut self, agent_setup: Option<Duration>) {
        self.mark_hello_at(agent_setup, Instant::now());
    }

    fn mark_hello_at(&mut self, agent_setup: Option<Duration>, now: Instant) {
        let whole = now.saturating_duration_since(self.last);
        self.last = now;
        match agent_setup {
            Some(agent) => {
                let agent = agent.min(whole);
                self.phases.push(Phase {
                    name: "kernel-boot".into(),
                    ms: ms(whole - agent),
                });
                self.phases.push(Phase {
                    name: "agent-setup".into(),
                    ms: ms(agent),
                });
            }
            None => self.phases.push(Phase {
                name: "kernel-boot".into(),
                ms: ms(whole),
            }),
        }
    }

    /// A boot begins now: the phases of an earlier, failed attempt are dropped (its time stays
    /// in the total). `keep`: the phases marked before the first attempt.
    pub fn boot_attempt(&mut self, keep: usize) {
        self.boot_attempt_at(keep, Instant::now());
    }

    fn boot_attempt_at(&mut self, keep: usize, now: Instant) {
        self.attempts += 1;
        self.phases.truncate(keep);
        self.last = now;
    }

    /// Notes the pooled VM's rehearsal (its agent's Hello says how long it took).
    pub fn rehearsed(&mut self, took: Option<Duration>) {
        self.rehearsal = took;
    }

    /// How many phases are marked (to pass to [`PhaseClock::boot_attempt`]).
    pub fn marked(&self) -> usize {
        self.phases.len()
    }

    /// Time from now until [`PhaseClock::resume`] is not counted (waiting for `start`).
    pub fn pause(&self) -> Instant {
        Instant::now()
    }

    /// Ends a pause begun at `since`; the next phase begins now.
    pub fn resume(&mut self, since: Instant) {
        let now = Instant::now();
        self.excluded += now.saturating_duration_since(since);
        self.last = now;
    }

    /// The phases so far and the total until now.
    pub fn finish(&self) -> StartPhases {
        self.finish_at(Instant::now())
    }

    fn finish_at(&self, now: Instant) -> StartPhases {
        let total = now
            .saturating_duration_since(self.t0)
            .saturating_sub(self.excluded);
        StartPhases {
            phases: self.phases.clone(),
            total_ms: ms(total),
            boot_attempts: self.attempts.max(1),
            rehearsal_ms: self.rehearsal.map(ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &StartPhases) -> Vec<&str> {
        p.phases.iter().map(|p| p.name.as_str()).collect()
    }

    fn sum(p: &StartPhases) -> f64 {
        p.phases.iter().map(|p| p.ms).sum()
    }

    #[test]
    fn phases_follow_each_other_and_sum_to_the_total() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = PhaseClock::start_at(t0);
        c.mark_at("keeper-setup", at(2));
        c.boot_attempt_at(1, at(2));
        c.mark_at("jail", at(7));
        c.mark_hello_at(Some(Duration::from_millis(30)), at(107));
        c.mark_at("rootfs", at(120));
        c.mark_at("workload-execve", at(125));
        let p = c.finish_at(at(125));
        assert_eq!(
            names(&p),
            [
                "keeper-setup",
                "jail",
                "kernel-boot",
                "agent-setup",
                "rootfs",
                "workload-execve"
            ]
        );
        let ms: Vec<f64> = p.phases.iter().map(|p| p.ms).collect();
        assert_eq!(ms, [2.0, 5.0, 70.0, 30.0, 13.0, 5.0]);
        assert_eq!(p.total_ms, 125.0);
        assert_eq!(sum(&p), p.total_ms);
        assert_eq!(p.boot_attempts, 1);
        assert_eq!(
            p.summary(),
            "keeper-setup=2.0ms jail=5.0ms kernel-boot=70.0ms agent-setup=30.0ms rootfs=13.0ms workload-execve=5.0ms total=125.0ms"
        );
    }

    #[test]
    fn a_pooled_vms_rehearsal_is_shown_beside_the_phases_not_in_them() {
        let t0 = Instant::now();
        let mut c = PhaseClock::start_at(t0);
        c.mark_at("warm-take", t0 + Duration::from_millis(5));
        c.rehearsed(Some(Duration::from_micros(81_250)));
        c.mark_at("warm-hello", t0 + Duration::from_millis(6));
        let p = c.finish_at(t0 + Duration::from_millis(6));
        assert_eq!(p.rehearsal_ms, Some(81.25));
        assert_eq!(p.total_ms, 6.0);
        assert_eq!(sum(&p), p.total_ms);
        assert!(
            p.summary()
                .ends_with("total=6.0ms (rehearsed 81.2ms at pool boot)"),
            "{}",
            p.summary()
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["rehearsal_ms"], 81.25);
        // A cold start has none, and says nothing of it.
        let cold = PhaseClock::start_at(t0).finish_at(t0);
        assert!(serde_json::to_value(&cold)
            .unwrap()
            .get("rehearsal_ms")
            .is_none());
    }

    #[test]
    fn a_guest_claiming_more_than_the_host_measured_is_clamped() {
        let t0 = Instant::now();
        let mut c = PhaseClock::start_at(t0);
        c.mark_hello_at(
            Some(Duration::from_secs(3600)),
            t0 + Duration::from_millis(50),
        );
        let p = c.finish_at(t0 + Duration::from_millis(50));
        assert_eq!(p.phases[0].ms, 0.0);
        assert_eq!(p.phases[1].ms, 50.0);
        assert!(sum(&p) <= p.total_ms);
        // No report from the agent: the whole interval is the kernel's.
        let mut c = PhaseClock::start_at(t0);
        c.mark_hello_at(None, t0 + Duration::from_millis(50));
        assert_eq!(
            names(&c.finish_at(t0 + Duration::from_millis(50))),
            ["kernel-boot"]
        );
    }

    #[test]
    fn a_retried_boot_keeps_its_time_in_the_total_only() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = PhaseClock::start_at(t0);
        c.mark_at("keeper-setup", at(1));
        let keep = c.marked();
        c.boot_attempt_at(keep, at(1));
        c.mark_at("jail", at(5));
        // The agent never answered: boot again.
        c.boot_attempt_at(keep, at(1000));
        c.mark_at("jail", at(1004));
        c.mark_hello_at(None, at(1100));
        let p = c.finish_at(at(1100));
        assert_eq!(names(&p), ["keeper-setup", "jail", "kernel-boot"]);
        assert_eq!(p.phases[1].ms, 4.0);
        assert_eq!(p.boot_attempts, 2);
        assert!(sum(&p) < p.total_ms);
        assert!(p.summary().ends_with("boot_attempts=2"));
    }

    #[test]
    fn a_held_start_does_not_count() {
        let mut c = PhaseClock::start();
        c.mark("rootfs");
        let since = c.pause();
        std::thread::sleep(Duration::from_millis(30));
        c.resume(since);
        c.mark("workload-execve");
        let p = c.finish();
        assert!(p.total_ms < 30.0, "{p:?}");
        assert!(sum(&p) <= p.total_ms + 0.001, "{p:?}");
    }
}
