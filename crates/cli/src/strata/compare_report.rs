//! What `strata compare` measured (compare.rs runs the instances): the report `--json` prints
//! (schema strata.compare/v2) and compare_chart.rs draws.

use serde::Serialize;

use super::compare_probes::ProbeResult;

/// min / median / max of a series, plus the samples.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stats {
    /// None for an empty series.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stats {
            min: s[0],
            median,
            max: s[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// Bytes on the host that must exist to start an instance, by part.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SizeParts {
    pub image_layers: u64,
    pub guest_kernel: u64,
    pub initramfs: u64,
    pub vm_disk: u64,
}

impl SizeParts {
    pub fn total(&self) -> u64 {
        self.image_layers + self.guest_kernel + self.initramfs + self.vm_disk
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    /// `container` or `vm`.
    pub layer: String,
    /// The VM platform (`uml`, `qemu`, `kvm`); null for the container.
    pub platform: Option<String>,
    /// How the VM's guest code runs (`kvm`, `tcg` on qemu); null otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// The VM came from the warm pool (`strata vm pool`), refilled between runs; the cold row
    /// of the same platform never takes a pooled VM.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// `uname -r` inside the instance.
    pub kernel: String,
    pub start_bytes: u64,
    pub start_parts: SizeParts,
    /// Allocated bytes of the upper dir / COW file after the run (median over runs).
    pub per_instance_bytes: u64,
    /// Spawn → the workload's execve took effect (recorded by the runtime / agent), milliseconds.
    pub start_ms: Stats,
    /// Spawn → CMD exited, milliseconds.
    pub exit_ms: Stats,
    /// Peak memory this instance added on the host: its cgroup's memory.max_usage_in_bytes
    /// (workload; for a VM every UML process incl. guest memory touched) plus the peak RSS
    /// (VmHWM) of the host processes outside it (the `strata run` monitor, the VM keeper).
    pub memory_peak_bytes: Stats,
    /// The part of `memory_peak_bytes` from the monitor and keeper processes.
    pub memory_monitor_bytes: Stats,
    pub probes: Vec<ProbeResult>,
}

impl LayerResult {
    /// `container`, `vm-uml`, `vm-uml-warm`, `vm-qemu-tcg` or `vm-qemu-tcg-warm`.
    pub fn label(&self) -> String {
        let l = match (&self.platform, &self.accelerator) {
            (Some(p), Some(a)) => format!("{}-{p}-{a}", self.layer),
            (Some(p), None) => format!("{}-{p}", self.layer),
            (None, _) => self.layer.clone(),
        };
        if self.warm {
            format!("{l}-warm")
        } else {
            l
        }
    }
}

/// Everything `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub image: String,
    pub command: Vec<String>,
    pub runs: u32,
    pub host_kernel: String,
    pub layers: Vec<LayerResult>,
}
