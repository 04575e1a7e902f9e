//! Boots a jailed VM through strata-vmm and reports how long it took until the guest's init
//! wrote `STRATA-BOOTED` on the channel, and until the VM process was gone (bench/vm-boot.sh).
//!
//! usage: [STRATA_BENCH_PLATFORM=uml|qemu] vm-boot KERNEL DISK [RUNS] [MEMORY_MIB] [CONSOLE_LOG]
//! DISK is a root filesystem image whose /init writes the marker to the channel (/dev/ttyS1 on
//! uml, /dev/hvc0 on qemu) and ends the VM.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_vmm::{Console, Disk, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: vm-boot KERNEL DISK [RUNS] [MEMORY_MIB]".into());
    }
    let kernel = PathBuf::from(&args[1]);
    let disk = PathBuf::from(&args[2]);
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let memory: u32 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let console = args
        .get(5)
        .map(|p| Console::File(PathBuf::from(p)))
        .unwrap_or_default();
    let platform = strata_vmm::platform(
        &std::env::var("STRATA_BENCH_PLATFORM").unwrap_or_else(|_| "uml".into()),
    )?;
    let work = std::env::temp_dir().join(format!("vm-boot-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut to_marker = Vec::new();
    let mut to_exit = Vec::new();
    let mut peak = Vec::new();
    let mut failed = 0;
    for run in 0..runs {
        let mut c = VmConfig::new(
            format!("bench-{}-{run}", std::process::id()),
            &kernel,
            work.join("run"),
        );
        c.memory_mib = memory;
        c.disks = vec![Disk {
            path: disk.clone(),
            cow: Some(work.join("root.cow")),
            read_only: false,
        }];
        c.kernel_params = vec![format!("root={}", platform.disk_device(0)), "ro".into()];
        c.init = Some("/init".into());
        c.console = console.clone();
        let start = Instant::now();
        let mut vm = platform.boot(&c)?;
        let mut ch = vm.take_channel().ok_or("no channel")?;
        ch.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let mut ok = true;
        while !String::from_utf8_lossy(&seen).contains("STRATA-BOOTED") {
            match ch.read(&mut buf) {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                // Ended without the marker, or hung: counted as failed, the VM is killed.
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            eprintln!("run {run}: no marker within 60 s (pid {})", vm.pid());
            failed += 1;
            vm.kill()?;
            continue;
        }
        to_marker.push(start.elapsed());
        // Peak memory of the VM's host processes, from its cgroup, just before it ends.
        peak.push(vm.memory().map(|m| m.peak_bytes).unwrap_or(0));
        vm.wait()?;
        to_exit.push(start.elapsed());
    }
    let _ = std::fs::remove_file(work.join("root.cow"));
    if to_marker.is_empty() {
        return Err(format!("all {runs} runs failed").into());
    }
    let _ = std::fs::remove_dir_all(&work);
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (ms(&v[0]), ms(&v[v.len() / 2]))
    };
    let (m_min, m_med) = stats(&mut to_marker);
    let (e_min, e_med) = stats(&mut to_exit);
    peak.sort();
    println!(
        "runs={runs} failed={failed} marker_min_ms={m_min:.0} marker_median_ms={m_med:.0} exit_min_ms={e_min:.0} exit_median_ms={e_med:.0} cgroup_peak_mib={:.1}",
        peak[peak.len() / 2] as f64 / (1 << 20) as f64
    );
    Ok(())
}
