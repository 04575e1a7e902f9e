//! The `qemu` platform: a hardware-model VM run by QEMU (`qemu-system-x86_64 -M microvm`), with
//! KVM where the host has hardware virtualization (VMX/SVM and a usable /dev/kvm) and TCG (software
//! emulation) everywhere else. QEMU runs in the same [jail](crate::jail) as a UML kernel.
//!
//! - Machine: microvm without firmware tables or legacy devices (`-nodefaults -no-user-config`,
//!   no option ROMs, no ACPI, no PCI); the kernel is booted directly (`-kernel`, `-initrd`,
//!   `-append`) and QEMU adds the virtio-mmio devices to its command line.
//! - Devices: virtio-blk per disk (a read-only base shared by every VM under a per-VM qcow2
//!   overlay from [`crate::qcow2`]), the strata-proto channel on a virtio console (`/dev/hvc0`) whose
//!   host end is a socketpair handed to QEMU as an fd, virtio-rng fed by QEMU's getrandom, and the
//!   serial port (the kernel console) on QEMU's stdout (the console log).
//! - Network (`--network bridge|NAME`, an engine's namespace): virtio-net over QEMU's tap
//!   backend on the tap fd the host opened in the VM's network namespace and redirected to its
//!   interface (crate::netns_tap, the same as UML's), with that interface's MAC; QEMU itself stays
//!   in the jail's empty network namespace and never opens /dev/net/tun. No vhost.
//! - Power-off: the guest has no ACPI, so the agent ends a VM with a reboot (`strata.halt=reboot`,
//!   `reboot=t`) and QEMU runs with `-no-reboot`: the reset ends QEMU. A guest panic does the same
//!   (`panic=-1`).
//! - QEMU's stderr goes to a memfd that [`Vm::report`] reads when something went wrong.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::cgroup::VmCgroup;
use crate::error::{Result, Unavailable, VmmError};
use crate::jail::{self, JailFile, JailSpec};
use crate::kvm::{cpu_has_virtualization, disk_letters};
use crate::netns_tap::{self, TAP_FD};
use crate::platform::{Console, Platform, VmConfig};
use crate::vm::Vm;

/// The guest's virtio console carrying strata-proto.
pub const CHANNEL_DEVICE: &str = "/dev/hvc0";
/// Debian's QEMU (package qemu-system-x86).
pub const DEFAULT_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Where Debian's QEMU keeps its loadable modules (TCG is one: accel-tcg-x86_64.so).
const QEMU_MODULE_DIR: &str = "/usr/lib/x86_64-linux-gnu/qemu";
/// microvm's firmware (qboot, a symlink to qboot.rom on Debian): it jumps to the kernel QEMU
/// loaded. In the jail it is `/firmware`, passed with `-bios`.
const MICROVM_BIOS: &str = "/usr/share/qemu/bios-microvm.bin";
/// Host memory QEMU may use beyond guest memory: its own text and heap, TCG's translation cache
/// (`tb-size`), I/O buffers.
const HOST_OVERHEAD_BYTES: u64 = 160 << 20;
/// TCG's translation-block cache, MiB (QEMU's default is 1 GiB of address space).
const TCG_TB_MIB: u32 = 32;
/// Threads of one QEMU (vCPUs, I/O workers, RCU).
const PIDS_MAX: u64 = 512;
/// The jailed QEMU's fd number for the channel socket.
const CHANNEL_FD: i32 = 3;
/// The jailed QEMU's fd number for its QMP monitor socket (a VM with a hot root disk).
const QMP_FD: i32 = 5;
/// microvm's virtio-mmio transports: 24 with ACPI (a second IOAPIC), 8 without (measured with
/// QEMU 7.2: a ninth `-device virtio-*-device` fails with "No 'virtio-bus' bus found").
const TRANSPORTS_ACPI: usize = 24;
const TRANSPORTS_NO_ACPI: usize = 8;

/// The disks a VM can have: microvm's transports less the console, the RNG and the NIC.
fn max_disks(acpi: bool, network: bool) -> usize {
    let transports = if acpi {
        TRANSPORTS_ACPI
    } else {
        TRANSPORTS_NO_ACPI
    };
    transports - 2 - usize::from(network)
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (Tiny Code Generator).
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg` (QEMU's `-accel` name, and the suffix of compare's `vm-qemu-*` row).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator this host gives QEMU, and why: KVM needs a VMX/SVM CPU flag and a /dev/kvm
/// that opens read-write (a PVM /dev/kvm, as on the machines strata is developed on, cannot run a
/// Linux guest and is not used).
pub fn accelerator() -> (Accel, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu_has_virtualization(&cpuinfo) {
        return (
            Accel::Tcg,
            "no vmx/svm flag in /proc/cpuinfo: software emulation".into(),
        );
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
    {
        Ok(_) => (Accel::Kvm, "hardware virtualization via /dev/kvm".into()),
        Err(e) => (
            Accel::Tcg,
            format!("/dev/kvm cannot be opened ({e}): software emulation"),
        ),
    }
}

/// The `qemu` platform.
#[derive(Debug)]
pub struct QemuPlatform {
    binary: PathBuf,
    accel: Option<Accel>,
}

impl Default for QemuPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuPlatform {
    /// The platform with Debian's QEMU (`STRATA_QEMU` overrides the binary) and the host's best
    /// accelerator (probed at boot).
    pub fn new() -> Self {
        QemuPlatform {
            binary: std::env::var_os("STRATA_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_QEMU)),
            accel: None,
        }
    }

    /// The platform with another QEMU binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        QemuPlatform {
            binary: binary.into(),
            accel: None,
        }
    }

    /// Forces an accelerator (`Accel::Tcg` on a KVM host, e.g. for compare's tcg row).
    pub fn with_accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// The accelerator VMs of this platform use.
    pub fn accel(&self) -> Accel {
        self.accel.unwrap_or_else(|| accelerator().0)
    }

    fn check_binary(&self) -> Result<(), String> {
        match std::fs::metadata(&self.binary) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(format!("{} is not a file", self.binary.display())),
            Err(e) => Err(format!(
                "QEMU is not installed ({}: {e}): install qemu-system-x86 (apt-get install \
                 qemu-system-x86) or set STRATA_QEMU to a qemu-system-x86_64",
                self.binary.display()
            )),
        }
    }
}

/// The kernel release in a bzImage's setup header (boot protocol ≥ 2.06), or why `data` (the
/// file's first 64 KiB at least) is not a bootable x86 kernel. `--kernel` is user input: this
/// parser never panics (tested with hostile input).
pub fn bzimage_release(data: &[u8]) -> std::result::Result<String, String> {
    if data.len() < 0x264 {
        return Err("too short to be a kernel image".into());
    }
    if data.get(0x1fe..0x200) != Some(&[0x55, 0xaa][..]) || data.get(0x202..0x206) != Some(b"HdrS")
    {
        if data.starts_with(b"\x7fELF") {
            return Err("an ELF file (vmlinux, or a UML kernel): boot the bzImage \
                        (arch/x86/boot/bzImage, /boot/vmlinuz-*)"
                .into());
        }
        return Err("not an x86 bzImage (no boot sector signature or 'HdrS' header)".into());
    }
    let version = u16::from_le_bytes([data[0x206], data[0x207]]);
    if version < 0x0206 {
        return Err(format!(
            "boot protocol {}.{:02} is older than 2.06",
            version >> 8,
            version & 0xff
        ));
    }
    let loadflags = data[0x211];
    if loadflags & 1 == 0 {
        return Err("not a bzImage (zImage loaded low)".into());
    }
    let off = usize::from(u16::from_le_bytes([data[0x20e], data[0x20f]])) + 0x200;
    let s = data
        .get(off..)
        .and_then(|rest| rest.get(..rest.iter().take(256).position(|&b| b == 0)?))
        .ok_or("the kernel version string is missing")?;
    let s = std::str::from_utf8(s).map_err(|_| "the kernel version string is not text")?;
    let release = s.split_whitespace().next().unwrap_or("");
    if release.is_empty() || !release.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the kernel version string is empty".into());
    }
    Ok(release.to_string())
}

/// Kernel options a guest needs on this platform: (option, what it is for). `y` or `m` both do
/// for the drivers, modules then come from the initrd.
const REQUIRED: &[(&str, &str)] = &[
    (
        "CONFIG_VIRTIO_MMIO",
        "the virtio-mmio transport of every device",
    ),
    (
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
        "virtio-mmio devices described on the command line",
    ),
    ("CONFIG_VIRTIO_CONSOLE", "the agent's channel (hvc0)"),
    ("CONFIG_VIRTIO_BLK", "the image disks"),
    ("CONFIG_BLK_DEV_INITRD", "the agent's initramfs"),
    ("CONFIG_SERIAL_8250_CONSOLE", "the console log"),
];

/// What a VM on a network needs on top of `REQUIRED`.
const REQUIRED_NETWORK: &[(&str, &str)] = &[("CONFIG_VIRTIO_NET", "the NIC of --network")];

/// The kernel's build configuration when it sits beside the kernel: `config` in a strata kernel
/// cache entry, `config-RELEASE` in a Debian-style /boot.
fn kernel_config(kernel: &Path, release: &str) -> Option<(PathBuf, String)> {
    let dir = kernel.parent()?;
    for name in ["config".to_string(), format!("config-{release}")] {
        let p = dir.join(&name);
        if let Ok(text) = std::fs::read_to_string(&p) {
            return Some((p, text));
        }
    }
    None
}

/// The value of `opt` in a .config.
fn config_value<'a>(config: &'a str, opt: &str) -> Option<&'a str> {
    config.lines().find_map(|l| {
        l.strip_prefix(opt)
            .and_then(|r| r.strip_prefix('='))
            .map(str::trim)
    })
}

/// Whether a kernel with this .config finds its virtio-mmio devices through ACPI (microvm's DSDT)
/// rather than the command line: kernels built without command-line devices but with ACPI (Debian's).
fn wants_acpi(config: &str) -> bool {
    config_value(config, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES") != Some("y")
        && config_value(config, "CONFIG_ACPI") == Some("y")
}

/// Options of `REQUIRED` (and `REQUIRED_NETWORK` for a VM on a network) that `config` (a
/// .config) lacks, and the ones built as modules.
fn missing_options(config: &str, network: bool) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut modules = Vec::new();
    let network_opts = if network { REQUIRED_NETWORK } else { &[] };
    for (opt, why) in REQUIRED.iter().chain(network_opts) {
        if *opt == "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES" && wants_acpi(config) {
            continue;
        }
        let val = config_value(config, opt);
        match val {
            Some("y") => {}
            Some("m") => modules.push(format!("{opt} ({why})")),
            _ => missing.push(format!("{opt} ({why})")),
        }
    }
    (missing, modules)
}

/// Kernel options for hardware microvm lacks, and the command-line word that stops the driver
/// probing for it.
const LEGACY_HINTS: &[(&str, &str)] = &[
    ("CONFIG_PCI", "pci=off"),
    ("CONFIG_SERIO_I8042", "i8042.noaux"),
    ("CONFIG_VIDEO_NOMODESET", "nomodeset"),
];

/// The hints of `LEGACY_HINTS` whose driver a kernel with this .config has.
fn legacy_hints(config: &str) -> Vec<&'static str> {
    LEGACY_HINTS
        .iter()
        .filter(|(opt, _)| matches!(config_value(config, opt), Some("y" | "m")))
        .map(|(_, hint)| *hint)
        .collect()
}

/// What the platform learnt about a kernel before booting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelFacts {
    pub release: String,
    /// The file QEMU boots: the bzImage, or the uncompressed `vmlinux` (PVH entry) beside a
    /// strata-built one, which skips the decompressor (~20 % of the CPU time of a TCG boot).
    pub boot_file: PathBuf,
    /// Command-line hints for legacy hardware microvm does not have (`pci=off`, `i8042.noaux`,
    /// `nomodeset`), each only where the kernel has (or may have) the driver: a kernel without
    /// it reports the word as unknown and passes it on to PID 1 (argv or environment).
    pub hints: Vec<&'static str>,
    /// Describe the devices with ACPI (the kernel's configuration is unknown, or it finds
    /// virtio-mmio devices only that way); else the command line does, and the guest skips ACPI.
    pub acpi: bool,
}

/// Checks the kernel file: a readable bzImage whose configuration (when known) has what the
/// platform needs (with `network`, a NIC too).
fn check_kernel(kernel: &Path, has_initrd: bool, network: bool) -> Result<KernelFacts> {
    let mut head = Vec::new();
    File::open(kernel)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(|e| VmmError::file("kernel", kernel, e))?;
    let release = bzimage_release(&head).map_err(|why| {
        VmmError::InvalidConfig(format!(
            "kernel {} is not usable by the qemu platform: {why}; build one with \
             scripts/build-guest-kernel.sh qemu or pass an x86_64 bzImage",
            kernel.display()
        ))
    })?;
    let Some((path, text)) = kernel_config(kernel, &release) else {
        return Ok(KernelFacts {
            release,
            acpi: true,
            boot_file: kernel.to_path_buf(),
            hints: LEGACY_HINTS.iter().map(|(_, h)| *h).collect(),
        });
    };
    {
        let (missing, modules) = missing_options(&text, network);
        if !missing.is_empty() {
            return Err(VmmError::InvalidConfig(format!(
                "kernel {} ({release}) lacks {} according to {}: rebuild it with these options \
                 (guest/qemu.config has them) or use strata's kernel (scripts/build-guest-kernel.sh qemu)",
                kernel.display(),
                missing.join(", "),
                path.display()
            )));
        }
        if !modules.is_empty() && !has_initrd {
            return Err(VmmError::InvalidConfig(format!(
                "kernel {} ({release}) has {} as modules (per {}) and no initrd carries them: \
                 pass --initrd with the modules, or use a kernel with them built in",
                kernel.display(),
                modules.join(", "),
                path.display()
            )));
        }
    }
    // scripts/build-guest-kernel.sh qemu publishes bzImage, vmlinux and config together.
    let vmlinux = kernel.with_file_name("vmlinux");
    let boot_file = if kernel.file_name().is_some_and(|n| n == "bzImage")
        && path.file_name().is_some_and(|n| n == "config")
        && config_value(&text, "CONFIG_PVH") == Some("y")
        && vmlinux.is_file()
    {
        vmlinux
    } else {
        kernel.to_path_buf()
    };
    Ok(KernelFacts {
        release,
        acpi: wants_acpi(&text),
        boot_file,
        hints: legacy_hints(&text),
    })
}

/// Host CPUs this process may run on.
fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// The host's memory in MiB (MemTotal).
fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The host TSC frequency in kHz (from /proc/cpuinfo's `cpu MHz`). Under TCG the guest's TSC is
/// the host's, and telling the guest its rate (`tsc_early_khz=`) spares the PIT calibration that
/// fails under emulation in ~40 % of boots.
fn host_tsc_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "cpu MHz"))?
        .1
        .trim();
    let (int, frac) = mhz.split_once('.').unwrap_or((mhz, "0"));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    let khz = int.parse::<u64>().ok()? * 1000 + frac.parse::<u64>().ok()?;
    (khz > 0).then_some(khz)
}

/// The guest kernel's command line.
pub(crate) fn kernel_cmdline(
    config: &VmConfig,
    accel: Accel,
    tsc_khz: Option<u64>,
    hints: &[&str],
) -> String {
    let mut p: Vec<String> = vec![
        "console=ttyS0".into(),
        "quiet".into(),
        // No ACPI, so power-off is a reset that ends QEMU (-no-reboot); a panic resets at once.
        "reboot=t".into(),
        "panic=-1".into(),
        "strata.halt=reboot".into(),
    ];
    // Nothing probes for hardware that microvm does not have.
    p.extend(hints.iter().map(|h| h.to_string()));
    if accel == Accel::Tcg {
        // Under TCG the guest's TSC is the host's: telling the guest its rate spares the PIT
        // calibration (which fails under emulation in ~40 % of boots), and `tsc=reliable` keeps
        // the clocksource watchdog from comparing it with late PIT ticks, declaring it unstable
        // and moving the guest clock to jiffies (it did so in every boot measured).
        if let Some(khz) = tsc_khz {
            p.push(format!("tsc_early_khz={khz}"));
        }
        p.push("tsc=reliable".into());
        p.push("no_timer_check".into());
        if config.vcpus == 1 {
            // TCG has no TSC-deadline timer, so the kernel would calibrate the local APIC timer
            // against the PIT and verify it, waiting 2 x 100 ms of real time. One vCPU needs no
            // per-CPU timer: the PIT is the tick (one-shot, so an idle guest still sleeps).
            p.push("noapictimer".into());
            // Nor SMP locking: patching every LOCK prefix to a UP no-op (thousands of
            // text_pokes, each a CR3 switch that flushes TCG's TLB) took ~0.2 s.
            p.push("noreplace-smp".into());
        }
    }
    p.push(format!("strata.channel={CHANNEL_DEVICE}"));
    p.extend(config.kernel_params.iter().cloned());
    if let Some(init) = &config.init {
        let key = if config.initrd.is_some() {
            "rdinit"
        } else {
            "init"
        };
        p.push(format!("{key}={init}"));
    }
    p.join(" ")
}

/// QEMU's argv for `config`, as the jailed QEMU sees its files: `/kernel`, `/initrd`, `/diskN`
/// (and the overlay `/diskN.qcow2`).
pub(crate) fn command_line(
    config: &VmConfig,
    accel: Accel,
    tsc_khz: Option<u64>,
    facts: &KernelFacts,
    nic_mac: Option<&str>,
) -> Vec<String> {
    let acpi = facts.acpi;
    let mut a: Vec<String> = vec!["qemu-system-x86_64".into()];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let machine = if acpi {
        "microvm,x-option-roms=off,acpi=on,isa-serial=on,auto-kernel-cmdline=off"
    } else {
        "microvm,x-option-roms=off,acpi=off,isa-serial=on,auto-kernel-cmdline=on"
    };
    push(&[
        "-M",
        machine,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-msg",
        "timestamp=off",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => {
            let tcg = format!("tcg,tb-size={TCG_TB_MIB}");
            push(&["-accel", &tcg, "-cpu", "max"]);
        }
    }
    let smp = config.vcpus.to_string();
    let mem = format!("{}M", config.memory_mib);
    push(&["-smp", &smp, "-m", &mem]);
    push(&["-bios", "/firmware", "-kernel", "/kernel"]);
    if config.initrd.is_some() {
        push(&["-initrd", "/initrd"]);
    }
    let cmdline = kernel_cmdline(config, accel, tsc_khz, &facts.hints);
    push(&["-append", &cmdline]);
    // The serial port (kernel console) on stdout: the console log or /dev/null.
    push(&[
        "-chardev",
        "stdio,id=con,signal=off",
        "-serial",
        "chardev:con",
    ]);
    // One port, no multiport: the console exists as soon as the driver probes (with multiport
    // the guest learns of ports asynchronously, after init may already look for hvc0).
    let chan = format!("socket,id=chan,fd={CHANNEL_FD}");
    push(&[
        "-chardev",
        &chan,
        "-device",
        "virtio-serial-device,max_ports=1",
        "-device",
        "virtconsole,chardev=chan",
    ]);
    push(&[
        "-object",
        "rng-builtin,id=rng",
        "-device",
        "virtio-rng-device,rng=rng",
    ]);
    if config.hot_root {
        // The warm pool's VM: QMP on a socket the host holds, and the root device over a
        // placeholder the image replaces at hand-over (crate::qemu_hotplug).
        let qmp = format!("socket,id=qmp,fd={QMP_FD}");
        let root = crate::qemu_hotplug::placeholder_blockdev();
        let dev = format!("virtio-blk-device,drive={}", crate::qemu_hotplug::ROOT_NODE);
        push(&[
            "-chardev",
            &qmp,
            "-mon",
            "chardev=qmp,mode=control",
            "-blockdev",
            &root,
            "-device",
            &dev,
        ]);
        if config.rehearsal_disk.is_some() {
            // The guest's second block device (vdb), read-only and shared by every pooled VM.
            push(&[
                "-blockdev",
                "driver=raw,node-name=rehearsal,read-only=on,file.driver=file,file.filename=/rehearsal,file.locking=off",
                "-device",
                "virtio-blk-device,drive=rehearsal",
            ]);
        }
    }
    for (i, disk) in config.disks.iter().enumerate() {
        let node = match (&disk.cow, disk.read_only) {
            (Some(_), _) => {
                // The read-only base is shared by every VM of the image, UML's too: UML locks
                // it with a whole-file POSIX lock that QEMU's byte-range image locks conflict
                // with ("Failed to get consistent read lock"). It is never written, so QEMU's
                // locking guards nothing here; the per-VM qcow2 layer keeps its lock.
                let base = format!(
                    "driver=raw,node-name=base{i},read-only=on,file.driver=file,file.filename=/disk{i},file.locking=off"
                );
                let top = format!(
                    "driver=qcow2,node-name=disk{i},backing=base{i},file.driver=file,file.filename=/disk{i}.qcow2"
                );
                push(&["-blockdev", &base, "-blockdev", &top]);
                format!("disk{i}")
            }
            (None, ro) => {
                let bd = format!(
                    "driver=raw,node-name=disk{i},read-only={},file.driver=file,file.filename=/disk{i}{}",
                    if ro { "on" } else { "off" },
                    // Shared read-only disks: as the base above.
                    if ro { ",file.locking=off" } else { "" }
                );
                push(&["-blockdev", &bd]);
                format!("disk{i}")
            }
        };
        let dev = format!("virtio-blk-device,drive={node}");
        push(&["-device", &dev]);
    }
    if let Some(mac) = nic_mac {
        // The tap fd the host opened (netns_tap.rs). It has no IFF_VNET_HDR, so QEMU's tap
        // backend moves plain frames (no offloads; the host kernel segments what the veth
        // receives on its way into the tap). No `host_mtu`: the agent sets the interface's MTU,
        // which the namespace may only have at start (`network_at_start`), and virtio-net
        // without it takes any MTU up to 65535.
        let netdev = format!("tap,id=net0,fd={TAP_FD}");
        let dev = format!("virtio-net-device,netdev=net0,mac={mac}");
        push(&["-netdev", &netdev, "-device", &dev]);
    }
    a
}

fn check_readable(what: &str, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| VmmError::file(what, path, e))?;
    if !meta.is_file() {
        return Err(VmmError::InvalidConfig(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o004 == 0 {
        return Err(VmmError::InvalidConfig(format!(
            "{what} {} has mode {:o}: the jailed VM runs as an unprivileged uid and needs it \
             world-readable (chmod o+r)",
            path.display(),
            meta.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

fn ro_file(host: impl Into<PathBuf>, name: impl Into<String>, executable: bool) -> JailFile {
    JailFile {
        host: host.into(),
        name: name.into(),
        writable: false,
        executable,
        device: false,
    }
}

/// vCPUs and memory within what the host has.
fn check_host_resources(vcpus: u32, memory_mib: u32) -> Result<()> {
    let cpus = host_cpus();
    if vcpus > cpus {
        return Err(VmmError::InvalidConfig(format!(
            "{vcpus} vCPUs requested but this host has {cpus} CPUs: ask for at most {cpus}"
        )));
    }
    if let Some(host) = host_memory_mib() {
        if u64::from(memory_mib) > host {
            return Err(VmmError::InvalidConfig(format!(
                "{memory_mib} MiB of guest memory requested but this host has {host} MiB: ask for less"
            )));
        }
    }
    Ok(())
}

/// Checks everything about `config` that can be checked before anything is created.
fn preflight(p: &QemuPlatform, config: &VmConfig, accel: Accel) -> Result<KernelFacts> {
    config.validate()?;
    p.check_binary()
        .map_err(|reason| Unavailable {
            platform: "qemu",
            reason,
        })
        .map_err(VmmError::Unavailable)?;
    // A NIC whose namespace is configured at start (`network_at_start`: an engine's new
    // namespace) may never be needed (`ctr run` without `--cni`): a kernel without virtio-net
    // boots, and an interface that does show up fails start with the agent's cause.
    let facts = check_kernel(
        &config.kernel,
        config.initrd.is_some(),
        config.network.is_some() && !config.network_at_start,
    )?;
    if let Some(initrd) = &config.initrd {
        check_readable("initrd", initrd)?;
    }
    check_host_resources(config.vcpus, config.memory_mib)?;
    let max = max_disks(facts.acpi, config.network.is_some());
    if config.hot_root && !config.disks.is_empty() {
        return Err(VmmError::InvalidConfig(
            "a VM whose root disk comes later (hot_root) boots with no other disk".into(),
        ));
    }
    if let Some(r) = &config.rehearsal_disk {
        if !config.hot_root {
            return Err(VmmError::InvalidConfig(
                "a rehearsal disk is for a pooled VM (hot_root) only".into(),
            ));
        }
        check_readable("rehearsal disk", r)?;
    }
    if config.disks.len() > max {
        return Err(VmmError::InvalidConfig(format!(
            "{} disks requested (the image's root disk and one per volume): microvm has {} \
             virtio-mmio slots {} ACPI and the console, the RNG{} take the others: use at most {max}",
            config.disks.len(),
            if facts.acpi { TRANSPORTS_ACPI } else { TRANSPORTS_NO_ACPI },
            if facts.acpi { "with" } else { "without" },
            if config.network.is_some() { " and the NIC" } else { "" },
        )));
    }
    for (i, disk) in config.disks.iter().enumerate() {
        if disk.cow.is_some() || disk.read_only {
            check_readable(&format!("disk {i}"), &disk.path)?;
        }
    }
    if accel == Accel::Tcg
        && !Path::new(QEMU_MODULE_DIR)
            .join("accel-tcg-x86_64.so")
            .exists()
    {
        // Built-in TCG (a non-Debian QEMU) needs no module; only Debian's splits it out.
        tracing::debug!("no accel-tcg module: assuming a QEMU with TCG built in");
    }
    if !Path::new(MICROVM_BIOS).is_file() {
        return Err(VmmError::Unavailable(Unavailable {
            platform: "qemu",
            reason: format!(
                "{MICROVM_BIOS} (microvm's firmware) is missing: install qemu-system-data"
            ),
        }));
    }
    Ok(facts)
}

/// A memfd for QEMU's stderr.
fn stderr_memfd() -> Result<File> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"qemu-stderr".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmmError::Jail {
            step: "create QEMU stderr memfd".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl Platform for QemuPlatform {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn check(&self) -> Result<(), Unavailable> {
        let un = |reason: String| Unavailable {
            platform: "qemu",
            reason,
        };
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } != 0 {
            return Err(un(
                "the VM jail needs root (namespaces, mounts, cgroups); run strata as root".into(),
            ));
        }
        self.check_binary().map_err(un)?;
        if crate::kernel::default_kernel("qemu").is_none() {
            return Err(un(
                "no qemu guest kernel: run scripts/build-guest-kernel.sh qemu".into(),
            ));
        }
        Ok(())
    }

    fn preferred(&self) -> bool {
        self.accel() == Accel::Kvm
    }

    fn nic_at_start(&self) -> bool {
        true
    }

    fn accelerator(&self) -> Option<&'static str> {
        Some(self.accel().name())
    }

    fn precheck(
        &self,
        vcpus: u32,
        memory_mib: u32,
        kernel: Option<&Path>,
        user_initrd: bool,
        network: bool,
    ) -> Result<()> {
        check_host_resources(vcpus, memory_mib)?;
        match kernel {
            Some(k) => {
                check_kernel(k, user_initrd, network)?;
            }
            // strata's own kernel: one built from an older guest/qemu.config (the fallback
            // while this one's is not built) may lack the NIC.
            None if network => {
                if let Some(k) = crate::kernel::default_kernel("qemu") {
                    check_kernel(&k.path, false, true).map_err(|e| match e {
                        VmmError::InvalidConfig(why) => VmmError::InvalidConfig(format!(
                            "{why} (this is strata's qemu kernel built from an older \
                             guest/qemu.config: run scripts/build-guest-kernel.sh qemu)"
                        )),
                        e => e,
                    })?;
                }
            }
            None => {}
        }
        Ok(())
    }

    fn boot(&self, config: &VmConfig) -> Result<Vm> {
        let accel = self.accel();
        let facts = preflight(self, config, accel)?;
        let libs = crate::kernel::shared_libraries(&self.binary)
            .map_err(|e| VmmError::file("QEMU binary", &self.binary, e))?;
        let uid = jail::allocate_uid();
        let mut gid = uid;

        let mut files = vec![
            // QEMU probes OFD locks on /dev/null.
            JailFile {
                host: "/dev/null".into(),
                name: "dev/null".into(),
                writable: true,
                executable: false,
                device: true,
            },
            JailFile {
                host: self.binary.clone(),
                name: "qemu".into(),
                writable: false,
                executable: true,
                device: false,
            },
            ro_file(MICROVM_BIOS, "firmware", false),
            ro_file(&facts.boot_file, "kernel", false),
        ];
        for lib in &libs {
            let name = lib.to_string_lossy().trim_start_matches('/').to_string();
            files.push(ro_file(lib.clone(), name, true));
        }
        if accel == Accel::Tcg {
            let module = Path::new(QEMU_MODULE_DIR).join("accel-tcg-x86_64.so");
            if module.is_file() {
                let name = module.to_string_lossy().trim_start_matches('/').to_string();
                files.push(ro_file(module, name, true));
            }
        } else {
            // /dev/kvm for the unprivileged uid: through its group (root:kvm 0660 on most hosts).
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata("/dev/kvm")
                .map_err(|e| VmmError::file("KVM device", "/dev/kvm", e))?;
            if meta.mode() & 0o060 != 0o060 || meta.gid() == 0 {
                return Err(VmmError::Unavailable(Unavailable {
                    platform: "qemu",
                    reason: format!(
                        "/dev/kvm (mode {:o}, gid {}) is not usable by the jailed QEMU's unprivileged \
                         uid: give it a group with read-write access (root:kvm 0660, the usual udev rule)",
                        meta.mode() & 0o777,
                        meta.gid()
                    ),
                }));
            }
            gid = meta.gid();
            files.push(JailFile {
                host: "/dev/kvm".into(),
                name: "dev/kvm".into(),
                writable: true,
                executable: false,
                device: true,
            });
        }
        if let Some(initrd) = &config.initrd {
            files.push(ro_file(initrd, "initrd", false));
        }
        if let Some(r) = &config.rehearsal_disk {
            files.push(ro_file(r, "rehearsal", false));
        }

        let mut created = Vec::new();
        let result = (|| -> Result<Vm> {
            for (i, disk) in config.disks.iter().enumerate() {
                let what = format!("disk {i}");
                match &disk.cow {
                    Some(cow) => {
                        let f = crate::qcow2::create(cow, &disk.path, &format!("/disk{i}"))
                            .map_err(|source| VmmError::Cow {
                                cow: cow.clone(),
                                base: disk.path.clone(),
                                source,
                            })?;
                        created.push(cow.clone());
                        std::os::unix::fs::fchown(&f, Some(uid), Some(uid))
                            .map_err(|e| VmmError::file(format!("{what} overlay"), cow, e))?;
                        files.push(ro_file(&disk.path, format!("disk{i}"), false));
                        files.push(JailFile {
                            host: cow.clone(),
                            name: format!("disk{i}.qcow2"),
                            writable: true,
                            executable: false,
                            device: false,
                        });
                    }
                    None if disk.read_only => {
                        files.push(ro_file(&disk.path, format!("disk{i}"), false));
                    }
                    None => {
                        let f = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                            .open(&disk.path)
                            .map_err(|e| VmmError::file(&what, &disk.path, e))?;
                        if !f
                            .metadata()
                            .map_err(|e| VmmError::file(&what, &disk.path, e))?
                            .is_file()
                        {
                            return Err(VmmError::InvalidConfig(format!(
                                "{what} {} is not a regular file",
                                disk.path.display()
                            )));
                        }
                        std::os::unix::fs::fchown(&f, Some(uid), Some(uid))
                            .map_err(|e| VmmError::file(&what, &disk.path, e))?;
                        files.push(JailFile {
                            host: disk.path.clone(),
                            name: format!("disk{i}"),
                            writable: true,
                            executable: false,
                            device: false,
                        });
                    }
                }
            }

            std::fs::create_dir_all(&config.runtime_dir)
                .map_err(|e| VmmError::file("runtime directory", &config.runtime_dir, e))?;
            let jail_root = config.runtime_dir.join("jail");
            match std::fs::create_dir(&jail_root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(VmmError::file("jail root", &jail_root, e)),
            }
            let cleanup_dirs = vec![jail_root.clone(), config.runtime_dir.clone()];
            let remove_dirs = || {
                for d in &cleanup_dirs {
                    let _ = std::fs::remove_dir(d);
                }
            };
            let fail = |e: VmmError| {
                remove_dirs();
                e
            };

            let (host_end, guest_end) = UnixStream::pair()
                .map_err(|e| VmmError::Jail {
                    step: "create channel socketpair".into(),
                    source: e,
                })
                .map_err(fail)?;
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null")
                .map_err(|e| fail(VmmError::file("null device", "/dev/null", e)))?;
            let log = match &config.console {
                Console::Null => None,
                Console::File(p) => Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o640)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(p)
                        .map_err(|e| fail(VmmError::file("console log", p, e)))?,
                ),
            };
            let out_fd = log
                .as_ref()
                .map(|f| f.as_raw_fd())
                .unwrap_or(null.as_raw_fd());
            let stderr = stderr_memfd().map_err(fail)?;
            let qmp = if config.hot_root {
                Some(
                    UnixStream::pair()
                        .map_err(|e| VmmError::Jail {
                            step: "create QMP socketpair".into(),
                            source: e,
                        })
                        .map_err(fail)?,
                )
            } else {
                None
            };

            let memory = u64::from(config.memory_mib) << 20;
            let cgroup = VmCgroup::create(
                &config.id,
                config.cgroups_path.as_deref(),
                memory + HOST_OVERHEAD_BYTES,
                PIDS_MAX,
                config.cpu_limit,
            )
            .map_err(fail)?;
            let procs = match cgroup.procs_files() {
                Ok(p) => p,
                Err(e) => {
                    let _ = cgroup.destroy();
                    return Err(fail(e));
                }
            };
            // The guest's NIC: a tap in the VM's network namespace, redirected to its
            // interface (as on UML). QEMU stays in the jail's empty namespace.
            let tap = match netns_tap::for_vm(
                &config.id,
                config.network.as_ref(),
                config.network_at_start,
            ) {
                Ok(t) => t,
                Err(e) => {
                    let _ = cgroup.destroy();
                    return Err(fail(e));
                }
            };
            let mut fds = vec![
                (null.as_raw_fd(), 0),
                (out_fd, 1),
                (stderr.as_raw_fd(), 2),
                (guest_end.as_raw_fd(), CHANNEL_FD),
            ];
            if let Some(t) = &tap {
                fds.push((t.fd.as_raw_fd(), TAP_FD));
            }
            if let Some((_, qemu_end)) = &qmp {
                fds.push((qemu_end.as_raw_fd(), QMP_FD));
            }
            let spec = JailSpec {
                root: jail_root,
                files,
                tmp_bytes: 1 << 20,
                uid,
                gid,
                exe: "/qemu".into(),
                argv: command_line(
                    config,
                    accel,
                    host_tsc_khz(),
                    &facts,
                    tap.as_ref().map(|t| t.boot_mac.as_str()),
                ),
                env: vec![
                    "TMPDIR=/tmp".into(),
                    "HOME=/tmp".into(),
                    "PATH=/".into(),
                    // QEMU looks for modules beside its (unknowable, without /proc) exec dir.
                    format!("QEMU_MODULE_DIR={QEMU_MODULE_DIR}"),
                ],
                fds,
                cgroup_procs: procs,
                rlimits: vec![
                    (libc::RLIMIT_CORE, 0),
                    (libc::RLIMIT_NOFILE, 1024),
                    (libc::RLIMIT_NPROC, PIDS_MAX),
                ],
                // QEMU's vCPU and I/O threads run at once: not pinned (jail.rs says why UML is).
                cpu: None,
            };
            tracing::debug!(id = %config.id, uid, argv = ?spec.argv, "booting QEMU guest");
            let pid = match jail::spawn(&spec) {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = cgroup.destroy();
                    return Err(fail(e));
                }
            };
            Ok(Vm {
                platform: "qemu",
                accelerator: Some(accel.name()),
                pid,
                channel: Some(host_end),
                cgroup: Some(cgroup),
                cleanup_dirs,
                status: None,
                uid,
                stderr: Some(stderr),
                console_log: match &config.console {
                    Console::File(p) => Some(p.clone()),
                    Console::Null => None,
                },
                // Our tap fd closes here: QEMU holds the only other one, so the tap goes with
                // it.
                deferred_nic: tap.as_ref().and_then(|t| t.deferred.clone()),
                nic: tap.and_then(|t| t.nic),
                qmp: qmp.map(|(host_end, _)| host_end),
            })
        })();
        if result.is_err() {
            for f in created {
                let _ = std::fs::remove_file(f);
            }
        }
        result
    }

    fn disk_device(&self, index: usize) -> String {
        format!("/dev/vd{}", disk_letters(index))
    }

    fn channel_device(&self) -> &'static str {
        CHANNEL_DEVICE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Disk;

    fn bzimage(version: &str) -> Vec<u8> {
        let mut d = vec![0u8; 0x1000];
        d[0x1fe] = 0x55;
        d[0x1ff] = 0xaa;
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        d[0x211] = 1;
        d[0x20e..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        d[0x500..0x500 + version.len()].copy_from_slice(version.as_bytes());
        d
    }

    #[test]
    fn bzimage_header() {
        assert_eq!(
            bzimage_release(&bzimage("6.1.0-strata (root@x) #1 SMP")).unwrap(),
            "6.1.0-strata"
        );
        assert!(bzimage_release(b"\x7fELF\x02\x01").is_err());
        let mut elf = bzimage("x");
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x1fe] = 0;
        assert!(bzimage_release(&elf).unwrap_err().contains("ELF"));
        let mut old = bzimage("6.1");
        old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        assert!(bzimage_release(&old).is_err());
        let mut low = bzimage("6.1");
        low[0x211] = 0;
        assert!(bzimage_release(&low).is_err());
        assert!(bzimage_release(&bzimage("")).is_err());
        // The version offset points past the end.
        let mut past = bzimage("6.1");
        past[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(bzimage_release(&past).is_err());
    }

    #[test]
    fn bzimage_parser_survives_hostile_input() {
        let seed = bzimage("6.1.0 #1");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let len = (next() % 0x1100) as usize;
            let mut d: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                seed[..len.min(seed.len())].to_vec()
            };
            for _ in 0..(next() % 6) {
                if !d.is_empty() {
                    let at = (next() as usize) % d.len();
                    d[at] = next() as u8;
                }
            }
            let _ = bzimage_release(&d);
        }
    }

    #[test]
    fn strata_kernels_boot_their_vmlinux() {
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("bzImage");
        std::fs::write(&bz, bzimage("6.1.192-strata #1")).unwrap();
        let config = "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_BLK_DEV_INITRD=y\nCONFIG_SERIAL_8250_CONSOLE=y\nCONFIG_PVH=y\nCONFIG_HZ=100\n";
        std::fs::write(dir.path().join("config"), config).unwrap();
        // Without a vmlinux: the bzImage.
        let f = check_kernel(&bz, true, false).unwrap();
        assert_eq!(f.boot_file, bz);
        assert_eq!(
            (f.release.as_str(), f.acpi, f.hints.is_empty()),
            ("6.1.192-strata", false, true)
        );
        // A kernel with PCI and the i8042 driver gets told not to probe for them.
        std::fs::write(
            dir.path().join("config"),
            format!("{config}CONFIG_PCI=y\nCONFIG_SERIO_I8042=m\n"),
        )
        .unwrap();
        assert_eq!(
            check_kernel(&bz, true, false).unwrap().hints,
            ["pci=off", "i8042.noaux"]
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"\x7fELF").unwrap();
        assert_eq!(
            check_kernel(&bz, true, false).unwrap().boot_file,
            dir.path().join("vmlinux")
        );
        // A kernel without PVH support keeps its bzImage.
        std::fs::write(
            dir.path().join("config"),
            config.replace("CONFIG_PVH=y\n", ""),
        )
        .unwrap();
        assert_eq!(check_kernel(&bz, true, false).unwrap().boot_file, bz);
    }

    #[test]
    fn config_options() {
        let full = "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_BLK_DEV_INITRD=y\nCONFIG_SERIAL_8250_CONSOLE=y\n";
        assert_eq!(missing_options(full, false), (vec![], vec![]));
        let (missing, _) = missing_options(
            &full.replace("CONFIG_VIRTIO_MMIO=y", "# CONFIG_VIRTIO_MMIO is not set"),
            false,
        );
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("CONFIG_VIRTIO_MMIO "), "{missing:?}");
        let (missing, modules) = missing_options(
            &full.replace("CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_BLK=m"),
            false,
        );
        assert!(missing.is_empty());
        assert!(modules[0].starts_with("CONFIG_VIRTIO_BLK "));
        // Debian's: no command-line devices, but ACPI describes them.
        let debian = full.replace("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y", "") + "CONFIG_ACPI=y\n";
        assert_eq!(missing_options(&debian, false), (vec![], vec![]));
        // A VM on a network needs the NIC too.
        let (missing, _) = missing_options(full, true);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("CONFIG_VIRTIO_NET "), "{missing:?}");
        let with_net = format!("{full}CONFIG_VIRTIO_NET=y\n");
        assert_eq!(missing_options(&with_net, true), (vec![], vec![]));
        assert!(wants_acpi(&debian));
        assert!(!wants_acpi(full));
    }

    #[test]
    fn command_lines() {
        let mut c = VmConfig::new("t", "/k", "/run/t");
        c.memory_mib = 256;
        c.vcpus = 2;
        c.disks = vec![
            Disk {
                path: "/img".into(),
                cow: Some("/c".into()),
                read_only: false,
            },
            Disk {
                path: "/ro".into(),
                cow: None,
                read_only: true,
            },
        ];
        c.initrd = Some("/i".into());
        c.init = Some("/strata-agent".into());
        c.kernel_params = vec!["strata.lower=/dev/vda".into()];
        let facts = |acpi| KernelFacts {
            release: "6.1".into(),
            acpi,
            boot_file: "/k".into(),
            hints: vec![],
        };
        let a = command_line(&c, Accel::Tcg, Some(2_445_406), &facts(false), None);
        let joined = a.join(" ");
        for want in [
            "-nodefaults -no-user-config",
            "-no-reboot",
            "-accel tcg,tb-size=32",
            "-smp 2 -m 256M",
            "-kernel /kernel -initrd /initrd",
            "socket,id=chan,fd=3",
            "file.filename=/disk0.qcow2",
            "backing=base0",
            "driver=raw,node-name=disk1,read-only=on,file.driver=file,file.filename=/disk1,file.locking=off",
            "file.filename=/disk0,file.locking=off",
            "-sandbox on,",
        ] {
            assert!(joined.contains(want), "{want}: {joined}");
        }
        assert!(!joined.contains("-netdev"), "no network, no NIC: {joined}");
        assert!(
            !joined.contains("-mon"),
            "no QMP monitor on a cold VM: {joined}"
        );
        // The warm pool's VM: a QMP monitor on fd 5 and the root device over a placeholder.
        let mut hot = VmConfig::new("p", "/k", "/run/p");
        hot.hot_root = true;
        let h = command_line(&hot, Accel::Tcg, None, &facts(false), None).join(" ");
        for want in [
            "-chardev socket,id=qmp,fd=5 -mon chardev=qmp,mode=control",
            "-blockdev driver=raw,node-name=root,file.driver=null-co,file.size=1099511627776,file.read-zeroes=on -device virtio-blk-device,drive=root",
        ] {
            assert!(h.contains(want), "{want}: {h}");
        }
        assert!(!h.contains("rehearsal"), "{h}");
        // With a rehearsal disk: read-only, right after the placeholder (the guest's vdb).
        hot.rehearsal_disk = Some("/c/rehearsal.ext4".into());
        let h = command_line(&hot, Accel::Tcg, None, &facts(false), None).join(" ");
        assert!(
            h.contains("-device virtio-blk-device,drive=root -blockdev driver=raw,node-name=rehearsal,read-only=on,file.driver=file,file.filename=/rehearsal,file.locking=off -device virtio-blk-device,drive=rehearsal"),
            "{h}"
        );
        let n = command_line(
            &c,
            Accel::Tcg,
            None,
            &facts(false),
            Some("aa:bb:cc:00:11:22"),
        )
        .join(" ");
        assert!(
            n.ends_with(
                "-netdev tap,id=net0,fd=4 -device virtio-net-device,netdev=net0,mac=aa:bb:cc:00:11:22"
            ),
            "{n}"
        );
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert!(append.contains("tsc_early_khz=2445406"), "{append}");
        assert!(append.contains("strata.channel=/dev/hvc0"), "{append}");
        assert!(
            append.ends_with("strata.lower=/dev/vda rdinit=/strata-agent"),
            "{append}"
        );
        let k = command_line(&c, Accel::Kvm, Some(1), &facts(true), None);
        assert!(k.join(" ").contains("-accel kvm -cpu host"));
        assert!(k.join(" ").contains("acpi=on"));
        assert!(joined.contains("acpi=off"));
        // Two vCPUs keep the local APIC timer and SMP locking.
        assert!(append.contains("tsc=reliable"), "{append}");
        assert!(!append.contains("noapictimer"), "{append}");
        assert!(!append.contains("pci=off"), "{append}");
        c.vcpus = 1;
        let one = kernel_cmdline(&c, Accel::Tcg, Some(1), &["pci=off"]);
        assert!(one.contains(" pci=off "), "{one}");
        assert!(one.contains(" noapictimer noreplace-smp "), "{one}");
        let kvm = kernel_cmdline(&c, Accel::Kvm, Some(1), &[]);
        for tcg_only in [
            "tsc_early_khz",
            "tsc=reliable",
            "noapictimer",
            "noreplace-smp",
        ] {
            assert!(!kvm.contains(tcg_only), "{kvm}");
        }
    }

    #[test]
    fn tsc_and_host_facts() {
        if let Some(khz) = host_tsc_khz() {
            assert!(khz > 100_000, "{khz}");
        }
        assert!(host_cpus() >= 1);
        assert!(host_memory_mib().unwrap() > 64);
    }

    #[test]
    fn disk_slots() {
        assert_eq!(max_disks(false, false), 6);
        assert_eq!(max_disks(false, true), 5);
        assert_eq!(max_disks(true, false), 22);
        assert_eq!(max_disks(true, true), 21);
    }

    #[test]
    fn devices() {
        let p = QemuPlatform::new();
        assert_eq!(p.disk_device(0), "/dev/vda");
        assert_eq!(p.disk_device(1), "/dev/vdb");
        assert_eq!(p.channel_device(), "/dev/hvc0");
    }
}
