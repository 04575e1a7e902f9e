//! Runs `true` in a jailed VM with strata-agent as PID 1, RUNS times, and reports the time from
//! boot to the workload's execve (the agent's `Started`), to its exit status and to the VM being
//! reaped (bench/vm-boot.sh): the `strata run --vm --rm IMAGE true` path without the CLI.
//!
//! usage: [STRATA_BENCH_PLATFORM=uml|qemu] vm-agent KERNEL AGENT DISK [RUNS] [MEMORY_MIB]
//! DISK is an ext4 image of the container rootfs (the agent mounts it as the overlay's lower).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_vmm::initramfs::{agent_initramfs, AGENT_GUEST_PATH};
use strata_vmm::{Disk, DiskFormat, GuestContract, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: vm-agent KERNEL AGENT DISK [RUNS] [MEMORY_MIB]".into());
    }
    let runs: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let memory: u32 = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let work = std::env::temp_dir().join(format!("vm-agent-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let initrd = agent_initramfs(&PathBuf::from(&args[2]), &work)?;
    let platform = strata_vmm::platform(
        &std::env::var("STRATA_BENCH_PLATFORM").unwrap_or_else(|_| "uml".into()),
    )?;
    let config = br#"{"ociVersion":"1.0.2","process":{"args":["/bin/true"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#;
    let (mut to_status, mut to_exit, mut peak) = (Vec::new(), Vec::new(), Vec::new());
    let mut to_started = Vec::new();
    let mut to_hello = Vec::new();
    for run in 0..runs {
        let mut c = VmConfig::new(
            format!("bench-agent-{}-{run}", std::process::id()),
            &args[1],
            work.join("run"),
        );
        c.memory_mib = memory;
        c.initrd = Some(initrd.clone());
        c.init = Some(AGENT_GUEST_PATH.into());
        c.disks = vec![Disk {
            path: PathBuf::from(&args[3]),
            cow: None,
            read_only: true,
        }];
        c.kernel_params = GuestContract {
            lower: Some((platform.disk_device(0), DiskFormat::Ext4)),
            upper: None,
            rootrw: false,
        }
        .kernel_params();
        let start = Instant::now();
        let mut vm = platform.boot(&c)?;
        let ch = vm.take_channel().ok_or("no channel")?;
        let client =
            strata_proto::Client::with_timeout(ch.try_clone()?, ch, Duration::from_secs(60))?;
        // The agent's hello: the guest kernel booted and PID 1 opened its channel.
        to_hello.push(start.elapsed());
        let session = client.create(config)?;
        client.start()?;
        to_started.push(start.elapsed());
        let status = session.wait()?;
        if status.code != 0 {
            return Err(format!("run {run}: true exited {}", status.code).into());
        }
        to_status.push(start.elapsed());
        peak.push(vm.memory().map(|m| m.peak_bytes).unwrap_or(0));
        let _ = client.shutdown();
        vm.wait()?;
        to_exit.push(start.elapsed());
    }
    let _ = std::fs::remove_dir_all(&work);
    let ms = |v: &mut Vec<Duration>| {
        v.sort();
        (
            v[0].as_secs_f64() * 1000.0,
            v[v.len() / 2].as_secs_f64() * 1000.0,
        )
    };
    let (h_min, h_med) = ms(&mut to_hello);
    let (x_min, x_med) = ms(&mut to_started);
    let (s_min, s_med) = ms(&mut to_status);
    let (e_min, e_med) = ms(&mut to_exit);
    peak.sort();
    println!(
        "runs={runs} hello_min_ms={h_min:.0} hello_median_ms={h_med:.0} started_min_ms={x_min:.0} started_median_ms={x_med:.0} status_min_ms={s_min:.0} status_median_ms={s_med:.0} exit_min_ms={e_min:.0} exit_median_ms={e_med:.0} cgroup_peak_mib={:.1}",
        peak[peak.len() / 2] as f64 / (1 << 20) as f64
    );
    Ok(())
}
