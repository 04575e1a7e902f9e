//! The warm VM pool: pre-booted VMs whose agent waits for a workload, so that `strata run --vm`
//! skips the guest kernel's boot.
//!
//! Layout under the runtime root: `vm/pool/<platform>-<memory>m/` is one pool (a shape), with
//! `pool.json` (its size, set by `strata vm pool --size N`) and one directory per pooled VM
//! (`<slot>/`: `state.json` in the VM keeper's format, `keeper.sock`, `console.log`, `run/`).
//!
//! Each pooled VM has its own small keeper process (detached, in its own session): it boots a
//! VM with no disk at all (kernel, agent initramfs; `strata.lower=/dev/ubdb` names the disk to
//! come; a qemu VM has its root device from boot, over a placeholder, and a QMP monitor), waits
//! until the agent's hello is in the channel, and then waits for one `claim`. A
//! claim (from the instance's VM keeper, vm_keeper.rs) re-labels the VM's cgroup to the
//! instance (`/strata-vm/<id>`), passes the channel over SCM_RIGHTS, closes the listener (a
//! pooled VM never serves two workloads) and, once the claimer says the workload started,
//! starts a replacement keeper (the refill). The
//! claimer hot-adds the image's disk (strata_vmm::uml_hotplug; on qemu it puts the image under
//! the root device over the QMP monitor the claim passed along, strata_vmm::qemu_hotplug), then
//! talks to the agent as after a cold boot. The claim connection stays open while the workload runs: when it closes (the
//! instance ended, or its keeper died) the pool keeper kills and reaps the VM and removes its
//! directory. Pooled VMs hold no workload data: the disk, config.json and stdio arrive only at
//! hand-over.
//!
//! A keeper killed from outside leaves a VM whose channel is closed: its agent powers the guest
//! off. What is left (the slot directory and an empty cgroup) is removed by the next pool
//! operation (`strata vm pool`, a claim, a refill): every one of them first sweeps slots whose
//! keeper is gone (`vm_keeper::destroy`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_vmm::{Console, DiskFormat, GuestContract, VmConfig};

use crate::vm_keeper::{self, KeeperState, VmSpec};

/// The largest pool `strata vm pool --size` accepts per shape.
pub const MAX_SIZE: u32 = 64;
/// The ubd index the root disk is hot-added as: UML configures ubd0 with its default file
/// (`root_fs`, absent in the jail) when the command line names none, so ubd0 cannot be added
/// later; the disk comes as ubd1 (/dev/ubdb).
pub const ROOT_DISK_INDEX: usize = 1;
/// The disk index of a pooled qemu VM's rehearsal disk, after the root placeholder (vdb).
pub const REHEARSAL_DISK_INDEX: usize = 1;
/// The platforms the pool holds VMs of.
pub const PLATFORMS: [&str; 2] = ["uml", "qemu"];

/// The disk index a pooled VM's root disk has: UML's hot-added ubd1; on qemu the root device
/// (vda) is there from boot, over a placeholder the image replaces (strata_vmm::qemu_hotplug).
pub fn root_disk_index(platform: &str) -> usize {
    if platform == "qemu" {
        0
    } else {
        ROOT_DISK_INDEX
    }
}

/// How long an idle pooled VM's agent has to say hello: a qemu VM under TCG boots in software
/// emulation at the lowest CPU priority.
fn hello_within(platform: &str) -> Duration {
    if platform == "qemu" {
        Duration::from_secs(90)
    } else {
        HELLO_WITHIN
    }
}
/// The nice value pooled VMs boot and idle at.
const IDLE_NICE: i32 = 19;
/// How long an idle pooled VM's agent has to say hello before its boot counts as failed.
const HELLO_WITHIN: Duration = Duration::from_secs(30);
/// How long QEMU has to answer one QMP command.
const QMP_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// `pool.json`: what one pool holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolConfig {
    pub platform: String,
    pub memory_mib: u32,
    pub size: u32,
    /// Where the agent's initramfs is cached (`<store>/vm/cache`).
    pub cache_dir: PathBuf,
}

/// One pool as `strata vm pool` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub platform: String,
    pub memory_mib: u32,
    pub size: u32,
    /// Pooled VMs whose agent waits for a workload.
    pub ready: u32,
    /// Pooled VMs still booting.
    pub booting: u32,
    /// Host memory charged to each ready VM's cgroup (bytes).
    pub idle_memory_bytes: Vec<u64>,
    /// Resident memory of each ready VM's pool keeper (bytes).
    pub keeper_memory_bytes: Vec<u64>,
    /// The last thing that went wrong in this pool (a boot or a teardown), until the next
    /// `strata vm pool --size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The pools' directory under a runtime root.
pub fn pools_dir(runtime_root: &Path) -> PathBuf {
    runtime_root.join("vm").join("pool")
}

fn shape_name(platform: &str, memory_mib: u32) -> String {
    format!("{platform}-{memory_mib}m")
}

fn shape_dir(pools: &Path, platform: &str, memory_mib: u32) -> PathBuf {
    pools.join(shape_name(platform, memory_mib))
}

/// Whether a VM with this spec can come from the pool: the uml or qemu platform with strata's
/// own kernel, no initrd, no volumes, one vCPU, strata's own cgroup (not an engine's), no
/// network (a VM has none yet). Anything else boots cold.
pub fn fits(spec: &VmSpec) -> bool {
    PLATFORMS.contains(&spec.platform.as_str())
        && spec.kernel.is_none()
        && spec.initrd.is_none()
        && spec.volumes.is_empty()
        && spec.vcpus == 1
        && spec.cgroups_path.is_none()
}

fn read_config(dir: &Path) -> Option<PoolConfig> {
    serde_json::from_slice(&std::fs::read(dir.join("pool.json")).ok()?).ok()
}

fn write_config(dir: &Path, c: &PoolConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(".pool.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(c)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("pool.json"))
        .with_context(|| format!("write {}", dir.join("pool.json").display()))
}

/// A lock over one pool's directory (sizing and refills count and start keepers under it).
struct PoolLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

fn lock(dir: &Path) -> std::io::Result<PoolLock> {
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(PoolLock)
        .map_err(|(_, e)| std::io::Error::from(e))
}

/// Slot directories of a pool (pooled VMs, booting or ready, claimed or not).
fn slots(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Removes the slots whose keeper is gone (killed from outside): their VM, cgroup and directory.
fn sweep(dir: &Path) {
    for slot in slots(dir) {
        match vm_keeper::load_state(&slot) {
            Some(st) if vm_keeper::alive(st.keeper_pid) => {}
            Some(_) => vm_keeper::destroy(&slot),
            None => {
                // A slot is made with its state.json; none means its keeper died right at
                // its start: only the directory is left, once old enough not to be starting.
                let old = std::fs::metadata(&slot)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|e| e > Duration::from_secs(5));
                if old {
                    vm_keeper::destroy(&slot);
                }
            }
        }
    }
}

/// Counts (ready, booting, unclaimed) of a pool.
fn count(dir: &Path) -> (u32, u32, Vec<PathBuf>) {
    let (mut ready, mut booting, mut idle) = (0, 0, Vec::new());
    for slot in slots(dir) {
        let Some(st) = vm_keeper::load_state(&slot) else {
            booting += 1;
            continue;
        };
        if !vm_keeper::alive(st.keeper_pid) {
            continue;
        }
        match st.status.as_str() {
            "ready" => {
                ready += 1;
                idle.push(slot);
            }
            "creating" => {
                booting += 1;
                idle.push(slot);
            }
            _ => {}
        }
    }
    (ready, booting, idle)
}

/// Starts keepers until the pool holds `size` unclaimed VMs (called with the lock held).
fn top_up(dir: &Path, c: &PoolConfig) {
    sweep(dir);
    let (ready, booting, _) = count(dir);
    for _ in (ready + booting)..c.size {
        spawn_keeper(dir, c);
    }
}

/// Sets the size of the pool of `platform` VMs with `memory_mib` of guest memory, starts or ends
/// pooled VMs to match, and (with `wait`) waits until `size` VMs are ready.
pub fn set_size(
    runtime_root: &Path,
    store: &Path,
    platform: &str,
    memory_mib: u32,
    size: u32,
    wait: Option<Duration>,
) -> anyhow::Result<PoolStatus> {
    use anyhow::{bail, Context};
    match platform {
        "uml" | "qemu" => {}
        "kvm" => bail!(
            "--platform kvm: the warm pool holds uml and qemu VMs (kvm VMs boot cold: \
             docs/architecture.md says why); use --platform uml or qemu"
        ),
        other => bail!("--platform {other}: unknown platform (the pool takes uml or qemu)"),
    }
    if size > MAX_SIZE {
        bail!("--size {size}: at most {MAX_SIZE} pooled VMs per platform and memory size");
    }
    if memory_mib < 64 {
        bail!("--memory: a VM needs at least 64m");
    }
    if size > 0 {
        // Every pooled VM may use its guest memory and its VMM's overhead on the host (UML's;
        // QEMU's with TCG's translation cache).
        let overhead = if platform == "qemu" { 160 } else { 96 };
        let need = (u64::from(size) * (u64::from(memory_mib) + overhead)) << 20;
        if let Some(avail) = mem_available() {
            if need > avail {
                bail!(
                    "--size {size} --memory {memory_mib}m: the pool could use {} MiB and the host \
                     has {} MiB available; choose a smaller pool",
                    need >> 20,
                    avail >> 20
                );
            }
        }
        let p = vm_keeper::select_platform(platform).map_err(anyhow::Error::msg)?;
        drop(p);
    }
    let pools = pools_dir(runtime_root);
    let dir = shape_dir(&pools, platform, memory_mib);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let c = PoolConfig {
        platform: platform.into(),
        memory_mib,
        size,
        cache_dir: store.join("vm").join("cache"),
    };
    let mut drain_errors = Vec::new();
    {
        let _l = lock(&dir).with_context(|| format!("lock {}", dir.display()))?;
        write_config(&dir, &c)?;
        let _ = std::fs::remove_file(dir.join("last-error"));
        sweep(&dir);
        let (_, _, idle) = count(&dir);
        // Too many: the newest idle ones go first (they are the least likely to be ready).
        for slot in idle
            .iter()
            .rev()
            .take(idle.len().saturating_sub(size as usize))
        {
            if let Err(e) = drain_slot(slot) {
                drain_errors.push(e);
            }
        }
        top_up(&dir, &c);
    }
    if size == 0 {
        // Nothing idle is left: the pool's directory goes (claimed VMs finish on their own).
        let t = Instant::now();
        while count(&dir).2.iter().any(|s| s.exists()) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if slots(&dir).is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir(&pools);
            if let Some(vm) = pools.parent() {
                let _ = std::fs::remove_dir(vm);
            }
        }
    } else if let Some(limit) = wait {
        let t = Instant::now();
        loop {
            let (ready, booting, _) = count(&dir);
            if ready >= size {
                break;
            }
            if booting == 0 && ready < size {
                let why = std::fs::read_to_string(dir.join("last-error"))
                    .unwrap_or_else(|_| "the agent did not answer in time".into());
                bail!("the pool has {ready} of {size} VMs ready and none booting: {why}");
            }
            if t.elapsed() > limit {
                bail!(
                    "the pool has {ready} of {size} VMs ready after {} s ({booting} still \
                     booting)",
                    limit.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !drain_errors.is_empty() {
        bail!(
            "the pool is at size {size}, but ending {} of its VMs left something behind: {}",
            drain_errors.len(),
            drain_errors.join("; ")
        );
    }
    Ok(status_of(&dir).unwrap_or(PoolStatus {
        platform: platform.into(),
        memory_mib,
        size,
        ready: 0,
        booting: 0,
        idle_memory_bytes: Vec::new(),
        keeper_memory_bytes: Vec::new(),
        last_error: None,
    }))
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

fn status_of(dir: &Path) -> Option<PoolStatus> {
    let c = read_config(dir)?;
    let (ready, booting, idle) = count(dir);
    let ready_states: Vec<KeeperState> = idle
        .iter()
        .filter_map(|s| vm_keeper::load_state(s).filter(|st| st.status == "ready"))
        .collect();
    let idle_memory_bytes = ready_states
        .iter()
        .filter_map(|st| st.cgroup.as_ref()?.memory().ok())
        .map(|m| m.current_bytes)
        .collect();
    let keeper_memory_bytes = ready_states
        .iter()
        .filter_map(|st| rss_bytes(st.keeper_pid))
        .collect();
    Some(PoolStatus {
        platform: c.platform,
        memory_mib: c.memory_mib,
        size: c.size,
        ready,
        booting,
        idle_memory_bytes,
        keeper_memory_bytes,
        last_error: std::fs::read_to_string(dir.join("last-error"))
            .ok()
            .filter(|e| !e.trim().is_empty()),
    })
}

/// VmRSS of a process.
fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? << 10)
}

/// Every pool under the runtime root (after sweeping what dead keepers left).
pub fn status(runtime_root: &Path) -> Vec<PoolStatus> {
    let pools = pools_dir(runtime_root);
    let Ok(rd) = std::fs::read_dir(&pools) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let dir = e.path();
        if let Ok(_l) = lock(&dir) {
            sweep(&dir);
        }
        out.extend(status_of(&dir));
    }
    out.sort_by(|a, b| (&a.platform, a.memory_mib).cmp(&(&b.platform, b.memory_mib)));
    out
}

/// Asks an idle pooled VM's keeper to end it (and its slot).
/// Ends an idle pooled VM through its keeper (or from outside when it does not answer). Err: the
/// keeper's word on what it could not remove.
fn drain_slot(slot: &Path) -> Result<(), String> {
    let answer = vm_keeper::request_at(slot, &serde_json::json!({"op": "drain"}), &[])
        .ok()
        .and_then(|mut r| vm_keeper::answer(&mut r).ok());
    let ok = answer.is_some();
    let result = match answer {
        Some(v) if v["ok"] == false => Err(v["message"]
            .as_str()
            .unwrap_or("the pool keeper could not end its VM")
            .to_string()),
        _ => Ok(()),
    };
    let t = Instant::now();
    while ok && slot.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if slot.exists() {
        // Still booting (no listener yet), or its keeper did not finish: end it from outside.
        vm_keeper::destroy(slot);
    }
    result
}

/// A VM taken from the pool: the channel to its agent, its leader (a pidfd, which stays right
/// even when the pid is reused) and the claim connection whose end ends the VM.
#[derive(Debug)]
pub struct Pooled {
    conn: Option<UnixStream>,
    pidfd: OwnedFd,
    /// The pool keeper, which reaps the VM and removes its cgroup and slot after it.
    keeper: Option<OwnedFd>,
    pid: i32,
    uid: u32,
    cgroup: Option<strata_vmm::cgroup::VmCgroup>,
    channel: Option<UnixStream>,
    /// A qemu VM's QMP monitor, in command mode (for the root disk's hand-over).
    qmp: Option<UnixStream>,
    /// How its guest code runs (`tcg`/`kvm` on qemu).
    accelerator: Option<&'static str>,
    console_log: PathBuf,
    /// The pooled VM's slot and its pool keeper's pid (recorded in the instance's state: a
    /// teardown left to a pool keeper that died is finished from there).
    slot: PathBuf,
    keeper_pid: i32,
    /// Ended with [`Pooled::end_detached`]: nothing is left to wait for here.
    released: bool,
}

impl Pooled {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn cgroup(&self) -> Option<&strata_vmm::cgroup::VmCgroup> {
        self.cgroup.as_ref()
    }

    /// `tcg`/`kvm` for a qemu VM; None on uml.
    pub fn accelerator(&self) -> Option<&'static str> {
        self.accelerator
    }

    pub fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    /// A qemu VM's QMP monitor (already in command mode); None on uml.
    pub fn take_qmp(&mut self) -> Option<strata_vmm::qmp::Qmp> {
        self.qmp
            .take()
            .map(|s| strata_vmm::qmp::Qmp::resume(s, QMP_ANSWER_WITHIN))
    }

    /// The pooled VM's slot directory.
    pub fn slot(&self) -> &Path {
        &self.slot
    }

    /// The pid of the pool keeper that reaps the VM and removes its cgroup and slot.
    pub fn keeper_pid(&self) -> i32 {
        self.keeper_pid
    }

    /// Ends the VM after its workload exited, without waiting for it: SIGKILL to its leader and
    /// the claim connection closed; its pool keeper (a detached process) reaps it and removes its
    /// cgroup and slot. A pool keeper that dies meanwhile leaves a slot with a dead keeper, which
    /// the next pool operation (or `destroy` of the instance's state) finishes.
    pub fn end_detached(&mut self) {
        self.sigkill_and_hang_up();
        self.released = true;
    }

    /// SIGKILL to the VM's leader (through its pidfd) and the claim connection closed: what both
    /// ways of ending a pooled VM start with.
    fn sigkill_and_hang_up(&mut self) {
        // SAFETY: pidfd_send_signal to the VM's leader through its pidfd.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        self.conn = None;
    }

    fn exited(&self, timeout_ms: i32) -> bool {
        pidfd_exited(&self.pidfd, timeout_ms)
    }

    /// Ends the VM: its pool keeper reaps it and removes its slot; we wait until it is gone.
    pub fn kill(&mut self) {
        self.sigkill_and_hang_up();
        let t = Instant::now();
        while !self.exited(100) && t.elapsed() < Duration::from_secs(10) {}
        // The pool keeper reaps the VM and removes the (re-labelled) cgroup: it must be done
        // before this returns, or its removal could hit the cgroup of the same name that a cold
        // boot after a failed hand-over makes at once.
        if let Some(k) = &self.keeper {
            while !pidfd_exited(k, 100) && t.elapsed() < Duration::from_secs(10) {}
        }
        // And if it could not (killed meanwhile): the cgroup goes here.
        if let Some(cg) = &self.cgroup {
            let _ = cg.remove();
            while cg.paths().iter().any(|p| p.exists()) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Tells the pool keeper the workload started (it then starts the refill).
    pub fn started(&self) {
        if let Some(mut c) = self.conn.as_ref() {
            let _ = c.write_all(b"started\n");
        }
    }

    pub fn has_exited(&self) -> bool {
        self.exited(0)
    }

    /// The pooled VM's console log (while its slot is there), for an error message.
    pub fn report(&self) -> String {
        std::fs::read_to_string(&self.console_log)
            .map(|t| {
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(10)..].join("\n")
            })
            .unwrap_or_default()
    }
}

fn pidfd_exited(fd: &OwnedFd, timeout_ms: i32) -> bool {
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll over one valid pollfd.
    unsafe { libc::poll(p.as_mut_ptr(), 1, timeout_ms) > 0 }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open with a pid and no flags; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    // SAFETY: a new fd from pidfd_open.
    (pid > 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if !self.released && !self.has_exited() {
            self.kill();
        }
    }
}

/// Claims a ready VM of the pool that fits `spec` for instance `id` (None: the pool is empty or
/// there is no pool of that shape). `state_dir` is the instance's `<root>/vm/<id>`.
/// Whether any pool under the runtime root `root` has a VM ready (its state says so and its
/// keeper lives): a `run --vm` will most likely be warm. A few small reads.
pub fn any_ready(root: &Path) -> bool {
    let Ok(shapes) = std::fs::read_dir(root.join("vm").join("pool")) else {
        return false;
    };
    shapes
        .flatten()
        .flat_map(|shape| slots(&shape.path()))
        .filter_map(|slot| vm_keeper::load_state(&slot))
        .any(|st| st.status == "ready" && vm_keeper::alive(st.keeper_pid))
}

pub fn take(state_dir: &Path, id: &str, spec: &VmSpec) -> Result<Option<Pooled>, String> {
    // STRATA_VM_POOL=off: always a cold boot (compare's cold row).
    if !fits(spec) || std::env::var_os("STRATA_VM_POOL").is_some_and(|v| v == "off") {
        return Ok(None);
    }
    let Some(root_vm) = state_dir.parent() else {
        return Ok(None);
    };
    let dir = shape_dir(&root_vm.join("pool"), &spec.platform, spec.memory_mib);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut last_err = None;
    for slot in slots(&dir) {
        let Some(st) = vm_keeper::load_state(&slot) else {
            continue;
        };
        if !vm_keeper::alive(st.keeper_pid) {
            // What a pool keeper killed from outside left (e.g. during the detached teardown
            // of a VM it served): its VM, cgroup and slot.
            vm_keeper::destroy(&slot);
            continue;
        }
        if st.status != "ready" {
            continue;
        }
        match claim(&slot, id) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => continue,
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

fn claim(slot: &Path, id: &str) -> Result<Option<Pooled>, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    // Another claimer got it first (the listener is closed), or it is draining: not an error.
    let Ok(r) = vm_keeper::request_at(slot, &serde_json::json!({"op": "claim", "id": id}), &[])
    else {
        return Ok(None);
    };
    let conn = r.into_inner();
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    let mut fds = Vec::new();
    if let Ok(cm) = msg.cmsgs() {
        for c in cm {
            if let ControlMessageOwned::ScmRights(v) = c {
                for fd in v {
                    // SAFETY: the kernel just installed this fd for us.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&buf[..n])
        .map_err(|e| format!("bad answer from the pool keeper: {e}"))?;
    if v["ok"] != true {
        return match v["message"].as_str() {
            Some("not ready") => Ok(None),
            m => Err(format!(
                "the pool keeper refused the claim: {}",
                m.unwrap_or("no reason")
            )),
        };
    }
    // The channel, then (qemu) the QMP monitor.
    let mut fds = fds.into_iter();
    let channel = fds.next().ok_or("the pool keeper sent no channel")?;
    let qmp = fds.next().map(UnixStream::from);
    if v["qmp"] == true && qmp.is_none() {
        return Err("the pool keeper sent no QMP monitor".into());
    }
    let pid = v["vm_pid"].as_i64().unwrap_or(0) as i32;
    let uid = v["uid"].as_u64().unwrap_or(0) as u32;
    let cgroup: Option<strata_vmm::cgroup::VmCgroup> =
        serde_json::from_value(v["cgroup"].clone()).ok();
    // The VM's leader is not reaped before our connection closes (its keeper waits for that).
    let Some(pidfd) = pidfd_open(pid) else {
        return Err(format!("the pooled VM {pid} is gone"));
    };
    let keeper = pidfd_open(v["keeper_pid"].as_i64().unwrap_or(0) as i32);
    Ok(Some(Pooled {
        conn: Some(conn),
        pidfd,
        keeper,
        pid,
        uid,
        cgroup,
        channel: Some(UnixStream::from(channel)),
        qmp,
        accelerator: match v["accelerator"].as_str() {
            Some("tcg") => Some("tcg"),
            Some("kvm") => Some("kvm"),
            _ => None,
        },
        console_log: slot.join("console.log"),
        slot: slot.to_path_buf(),
        keeper_pid: v["keeper_pid"].as_i64().unwrap_or(0) as i32,
        released: false,
    }))
}

/// Forks a detached keeper for a new pooled VM in `dir` (a double fork: nobody has to reap it).
fn spawn_keeper(dir: &Path, c: &PoolConfig) {
    let Ok(id) = crate::records::new_id() else {
        return;
    };
    let slot = dir.join(&id[..16]);
    if std::fs::create_dir(&slot).is_err() {
        return;
    }
    // SAFETY: the callers (the CLI, a pool keeper) are single-threaded; the children only run
    // the keeper and _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: second fork in the child, then _exit.
            if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                // A pooled VM boots at the lowest CPU priority (inherited by the VM): a refill
                // must not slow down the workload whose claim started it. The claim restores
                // normal priority.
                // SAFETY: setpriority of this process.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, IDLE_NICE) };
                let code = keeper(&slot, c);
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(code) }
            }
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(_) => {
            let _ = std::fs::remove_dir(&slot);
        }
    }
}

/// The pooled VM's keeper: boots, waits for the agent, serves one claim (or a drain), then ends
/// the VM once its claimer is done. Returns the process's exit code.
fn keeper(slot: &Path, c: &PoolConfig) -> i32 {
    let _ = nix::unistd::setsid();
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    vm_keeper::close_other_fds(&[]);
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto a standard fd.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    let slot_id = slot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vm_id = format!("pool-{slot_id}");
    let mut st = KeeperState {
        keeper_pid: std::process::id() as i32,
        status: "creating".into(),
        created: chrono::Utc::now().to_rfc3339(),
        memory_mib: c.memory_mib,
        platform: c.platform.clone(),
        cgroups_path: Some(PathBuf::from(format!("/strata-vm/{vm_id}"))),
        ..Default::default()
    };
    vm_keeper::save_state(slot, &st);
    let gone = |slot: &Path| {
        let _ = std::fs::remove_dir_all(slot);
        1
    };
    let listener = match vm_keeper::bind_keeper_socket(slot) {
        Ok(l) => l,
        Err(_) => return gone(slot),
    };
    let mut vm = match boot(slot, &vm_id, c) {
        Ok(vm) => vm,
        Err(m) => {
            // For `strata vm pool`, which reports it.
            if let Some(dir) = slot.parent() {
                let _ = std::fs::write(dir.join("last-error"), m);
            }
            return gone(slot);
        }
    };
    st.vm_pid = vm.pid();
    st.cgroup = vm.cgroup().cloned();
    st.cgroup_dirs = vm.cgroup_dirs();
    vm_keeper::save_state(slot, &st);
    let Some(channel) = vm.take_channel() else {
        let _ = vm.kill();
        return gone(slot);
    };
    // qemu: the monitor the claimer hands the root disk over; in command mode before the VM
    // is offered, so the hand-over is only its disk's commands.
    let qmp = match vm.take_qmp() {
        None => None,
        Some(s) => match strata_vmm::qmp::Qmp::handshake(s, QMP_ANSWER_WITHIN) {
            Ok(q) => Some(q.into_socket()),
            Err(e) => {
                let _ = vm.kill();
                if let Some(dir) = slot.parent() {
                    let why = format!("the pooled VM's QMP monitor: {e}: {}", vm.report());
                    let _ = std::fs::write(dir.join("last-error"), why);
                }
                return gone(slot);
            }
        },
    };
    // SAFETY: pidfd_open of our own child, the VM's leader.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, vm.pid(), 0) } as RawFd;
    if pidfd < 0 {
        let _ = vm.kill();
        return gone(slot);
    }
    // SAFETY: a new fd from pidfd_open.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The agent's hello waiting in the channel means the guest is up and the agent listens; it
    // stays unread for the claimer's strata-proto client.
    let within = hello_within(&c.platform);
    let ready = poll_one(channel.as_fd(), libc::POLLIN, within);
    if !ready || poll_one(pidfd.as_fd(), libc::POLLIN, Duration::ZERO) {
        let _ = vm.kill();
        if let Some(dir) = slot.parent() {
            let why = format!(
                "the pooled VM's agent did not answer within {} s: {}",
                within.as_secs(),
                vm.report()
            );
            let _ = std::fs::write(dir.join("last-error"), why);
        }
        return gone(slot);
    }
    st.status = "ready".into();
    vm_keeper::save_state(slot, &st);
    // The VM keeps the idle nice value it inherited; this keeper, blocked from now on, answers
    // the claim at normal priority: at nice 19 its wake-up waited behind any busy process
    // (claims took 1-10 ms, a warm start's largest variable step).
    // SAFETY: setpriority of this process (root may raise it back).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
    let _ = listener.set_nonblocking(true);
    // Wait for a claim or a drain; a VM that dies meanwhile ends the slot.
    let conn = loop {
        let mut p = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll over two valid pollfds.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if p[1].revents != 0 {
            let _ = vm.kill();
            return gone(slot);
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let mut r = BufReader::new(&conn);
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let req: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match req["op"].as_str() {
            Some("drain") => {
                // The drainer hears how it ended (a cgroup that cannot be removed, say).
                let reply = match vm.kill() {
                    Ok(_) => serde_json::json!({"ok": true}),
                    Err(e) => serde_json::json!({
                        "ok": false,
                        "message": format!("ending the pooled VM {vm_id}: {e}"),
                    }),
                };
                let _ = writeln!(&conn, "{reply}");
                return gone(slot) - 1;
            }
            Some("claim") => {
                let id = req["id"].as_str().unwrap_or_default();
                let valid = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                // The VM works for a workload from now on: normal CPU priority.
                renice_all(vm.cgroup(), 0);
                // SAFETY: setpriority of this process (root may raise it back).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
                let relabelled = if valid {
                    vm.relabel(id).map_err(|e| e.to_string())
                } else {
                    Err(format!("bad instance id {id:?}"))
                };
                if let Err(m) = relabelled {
                    let _ = writeln!(&conn, "{}", serde_json::json!({"ok": false, "message": m}));
                    // A pooled VM whose hand-over failed is not offered again.
                    let _ = vm.kill();
                    return gone(slot);
                }
                let answer = serde_json::json!({
                    "ok": true,
                    "keeper_pid": std::process::id(),
                    "vm_pid": vm.pid(),
                    "uid": vm.uid(),
                    "cgroup": vm.cgroup(),
                    "qmp": qmp.is_some(),
                    "accelerator": vm.accelerator(),
                });
                let bytes = answer.to_string().into_bytes();
                let iov = [std::io::IoSlice::new(&bytes)];
                let mut fds = vec![channel.as_raw_fd()];
                fds.extend(qmp.as_ref().map(|q| q.as_raw_fd()));
                let cm = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                if nix::sys::socket::sendmsg::<()>(
                    conn.as_raw_fd(),
                    &iov,
                    &cm,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .is_err()
                {
                    let _ = vm.kill();
                    return gone(slot);
                }
                break conn;
            }
            _ => {
                let _ = writeln!(
                    &conn,
                    "{}",
                    serde_json::json!({"ok": false, "message": "unknown request"})
                );
            }
        }
    };
    // Never a second workload: later claimers find no listener.
    drop(listener);
    let _ = std::fs::remove_file(slot.join("keeper.sock"));
    drop(channel);
    drop(qmp);
    st.status = "claimed".into();
    st.cgroup = vm.cgroup().cloned();
    st.cgroup_dirs = vm.cgroup_dirs();
    vm_keeper::save_state(slot, &st);
    // The refill, once the workload started (the claimer says so; at most 2 s later): its boot
    // then does not compete with the hand-over and the workload's start for the CPU.
    // A hand-over that failed (the claimer closed without a word) refills nothing: a broken
    // pool does not boot VMs in a loop.
    let started = {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let r = BufReader::new(&conn).read_line(&mut line);
        line == "started\n"
            || matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    };
    // While a short workload runs, nothing here moves a process between cgroups or boots a
    // VM: a move (the cgroup2 half of the re-label, a new VM joining its cgroup) makes the
    // kernel wait a grace period during which every fork and exit on the host waits too, the
    // workload's own (in UML each guest exec and exit is a host process made or ended). So
    // both wait until the claimer is done or SETTLE passed.
    let _ = conn.set_nonblocking(true);
    let ended = !started || wait_end(&conn, &pidfd, Some(SETTLE));
    if !ended {
        // A move that fails leaves processes under the old cgroup2 name, which the removal
        // at the end also removes.
        let _ = vm.finish_relabel();
        st.cgroup = vm.cgroup().cloned();
        st.cgroup_dirs = vm.cgroup_dirs();
        vm_keeper::save_state(slot, &st);
    }
    if let Some(dir) = slot.parent().filter(|_| started) {
        if let Ok(_l) = lock(dir) {
            if let Some(c) = read_config(dir) {
                top_up(dir, &c);
            }
        }
    }
    // Until the claimer is done (its connection closes) or the VM ends (at once when the
    // hand-over failed: the claimer closed without saying the workload started).
    if !ended || !started {
        wait_end(&conn, &pidfd, None);
    }
    // The detached teardown of a VM that served a workload (the claimer returned already).
    strata_container::kill_point::hit("pool:teardown");
    if let Err(e) = vm.kill() {
        // Nobody waits for this teardown: `strata vm pool` shows it.
        if let Some(dir) = slot.parent() {
            let _ = std::fs::write(
                dir.join("last-error"),
                format!("tearing down the VM that served a workload ({vm_id}): {e}"),
            );
        }
    }
    let _ = std::fs::remove_dir_all(slot);
    0
}

/// How long a claimed VM's keeper leaves the workload alone before it finishes the cgroup
/// re-label and boots the refill (unless the workload ends first).
const SETTLE: Duration = Duration::from_millis(250);

/// Waits until the claim connection has something (the claimer closed it: the instance is
/// done) or the VM ended, for at most `limit`; returns whether one of them happened.
fn wait_end(conn: &UnixStream, pidfd: &OwnedFd, limit: Option<Duration>) -> bool {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        let mut p = [
            libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                left.as_millis().max(1) as i32
            }
            None => -1,
        };
        // SAFETY: poll over two valid pollfds.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            continue;
        }
        if p[1].revents != 0 || p[0].revents != 0 {
            return true;
        }
    }
}

/// Sets the nice value of every thread of the VM's processes.
fn renice_all(cg: Option<&strata_vmm::cgroup::VmCgroup>, nice: i32) {
    let Some(pids) = cg.and_then(|c| c.cgroup().pids().ok()) else {
        return;
    };
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                // SAFETY: setpriority of a thread of the VM (PRIO_PROCESS names one thread).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
            }
        }
    }
}

fn poll_one(fd: std::os::fd::BorrowedFd, events: i16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        }];
        // SAFETY: poll over one valid pollfd.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 1, left.as_millis() as i32) };
        if n > 0 {
            return p[0].revents & events != 0;
        }
        if n == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Boots a pooled VM: the platform's kernel and the agent, no disk; the root disk will come as
/// disk [`ROOT_DISK_INDEX`].
fn boot(slot: &Path, vm_id: &str, c: &PoolConfig) -> Result<strata_vmm::Vm, String> {
    let platform = vm_keeper::select_platform(&c.platform)?;
    let kernel = strata_vmm::default_kernel(platform.name())
        .ok_or_else(|| format!("no guest kernel for {}", platform.name()))?
        .path;
    let agent = vm_keeper::agent_path()?;
    let initrd = vm_keeper::agent_initrd(&agent, &c.cache_dir)?;
    let mut cfg = VmConfig::new(vm_id, kernel, slot.join("run"));
    cfg.memory_mib = c.memory_mib;
    cfg.vcpus = 1;
    cfg.initrd = Some(initrd);
    cfg.init = Some(strata_vmm::initramfs::AGENT_GUEST_PATH.into());
    // qemu: the root device is there from boot, over a placeholder (and a QMP monitor for
    // the hand-over); UML's disk comes as a new ubd device.
    cfg.hot_root = platform.name() == "qemu";
    cfg.kernel_params = GuestContract {
        lower: Some((
            platform.disk_device(root_disk_index(platform.name())),
            DiskFormat::Ext4,
        )),
        upper: None,
        rootrw: true,
    }
    .kernel_params();
    cfg.kernel_params.push("dummy.numdummies=0".into());
    if cfg.hot_root {
        // A qemu guest rehearses one start on strata's own small disk before its hello, so the
        // workload's start finds the kernel's paths already translated (strata_vmm::rehearsal).
        cfg.rehearsal_disk = Some(vm_keeper::agent_rehearsal_disk(&agent, &c.cache_dir)?);
        cfg.kernel_params.push(format!(
            "{}={}",
            strata_proto::guest::PARAM_REHEARSE,
            platform.disk_device(REHEARSAL_DISK_INDEX)
        ));
    }
    cfg.console = Console::File(slot.join("console.log"));
    platform
        .boot(&cfg)
        .map_err(|e| format!("boot the pooled {} VM: {e}", platform.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            platform: "uml".into(),
            kernel: None,
            initrd: None,
            disk: "/d".into(),
            volumes: vec![],
            memory_mib: 128,
            vcpus: 1,
            cache_dir: "/c".into(),
            tty: false,
            cgroups_path: None,
        }
    }

    #[test]
    fn only_plain_uml_and_qemu_vms_fit() {
        assert!(fits(&spec()));
        let mut s = spec();
        s.platform = "qemu".into();
        assert!(fits(&s));
        s.platform = "kvm".into();
        assert!(!fits(&s));
        let mut s = spec();
        s.kernel = Some("/k".into());
        assert!(!fits(&s));
        let mut s = spec();
        s.cgroups_path = Some("/kubepods/x".into());
        assert!(!fits(&s));
        let mut s = spec();
        s.volumes.push(crate::vm_keeper::VolumeDisk {
            path: "/v".into(),
            destination: "/v".into(),
            read_only: true,
            snapshot: false,
        });
        assert!(!fits(&s));
    }

    #[test]
    fn bad_sizes_and_platforms_are_refused_before_anything_is_made() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let e = set_size(&root, t.path(), "uml", 128, MAX_SIZE + 1, None).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        let e = set_size(&root, t.path(), "vmware", 128, 1, None).unwrap_err();
        assert!(e.to_string().contains("unknown platform"), "{e}");
        let e = set_size(&root, t.path(), "kvm", 128, 1, None).unwrap_err();
        assert!(e.to_string().contains("uml and qemu VMs"), "{e}");
        assert!(!root.exists());
    }
}
