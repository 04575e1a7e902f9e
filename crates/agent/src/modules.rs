//! Loads the guest drivers strata needs when the kernel has them as modules (a user's kernel booted
//! with `--kernel PATH --initrd PATH`, e.g. Debian's linux-image-amd64, whose virtio-mmio, virtio
//! block/console and ext4/overlay drivers are modules). The modules come from the initrd's
//! `/lib/modules/RELEASE` (listed by its `modules.dep`); strata's own kernels have the drivers
//! built in and no module tree in the initramfs, so this costs one failed stat there.
//!
//! As modprobe does, the `module.param=value` words of the kernel command line become the
//! module's parameters (virtio_mmio's `device=` list comes from QEMU that way). modules.dep comes
//! from a user's initrd: its parser never panics (tested with hostile input).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsRawFd;

/// Drivers strata's guest contract uses, in load order (transport before devices).
pub const WANTED: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_rng",
    // The NIC of a VM on a network (qemu platform): without one it binds to nothing.
    "virtio_net",
    // ext4's metadata checksums ask the crypto API for crc32c, which cannot autoload here.
    "crc32c_generic",
    "ext4",
    "erofs",
    "overlay",
];

/// A module's name as the kernel knows it: the file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// modules.dep: module name → (its path, the paths of its dependencies in modules.dep's order).
/// Lines that are not `PATH: DEPS` are ignored; paths with `..` are refused.
pub fn parse_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    let ok = |p: &str| !p.is_empty() && !p.split('/').any(|c| c == "..") && p.len() < 512;
    let mut map = HashMap::new();
    for line in text.lines().take(100_000) {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        let Some(name) = module_name(path).filter(|_| ok(path)) else {
            continue;
        };
        let deps: Vec<String> = deps
            .split_whitespace()
            .filter(|d| ok(d) && module_name(d).is_some())
            .take(64)
            .map(str::to_string)
            .collect();
        map.insert(name, (path.to_string(), deps));
    }
    map
}

/// The parameters the command line gives module `name` (`name.key=value` words, `-` and `_`
/// alike in the module name), as one string for finit_module.
pub fn cmdline_params(cmdline: &str, name: &str) -> String {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| {
            let (module, rest) = w.split_once('.')?;
            (module.replace('-', "_") == name && !rest.is_empty()).then_some(rest)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The files to load for `wanted`, dependencies first, each once.
pub fn load_order(dep: &HashMap<String, (String, Vec<String>)>, wanted: &[&str]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for w in wanted {
        let Some((path, deps)) = dep.get(*w) else {
            continue; // built in, or not available: nothing to load
        };
        // modules.dep lists dependencies so that the last one is loaded first.
        for d in deps.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
    }
    order
}

/// Loads the wanted modules found under /lib/modules/RELEASE; returns what went wrong (as
/// warnings: a missing driver shows later as a missing device, with its own message).
pub fn load_wanted(release: &str, cmdline: &str) -> Vec<String> {
    let base = format!("/lib/modules/{release}");
    let Ok(text) = std::fs::read_to_string(format!("{base}/modules.dep")) else {
        return Vec::new();
    };
    let dep = parse_dep(&text);
    let mut warnings = Vec::new();
    for rel in load_order(&dep, WANTED) {
        let name = module_name(&rel).unwrap_or_default();
        let params = cmdline_params(cmdline, &name);
        if let Err(e) = finit(&format!("{base}/{rel}"), &params) {
            warnings.push(format!("cannot load module {rel}: {e}"));
        }
    }
    warnings
}

fn finit(path: &str, params: &str) -> std::io::Result<()> {
    const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;
    let f = std::fs::File::open(path)?;
    let params = CString::new(params).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let flags = if path.ends_with(".ko") {
        0
    } else {
        MODULE_INIT_COMPRESSED_FILE
    };
    // SAFETY: finit_module reads the open file and the NUL-terminated parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko
";

    #[test]
    fn names_and_order() {
        assert_eq!(module_name("a/b/virtio-rng.ko").unwrap(), "virtio_rng");
        assert_eq!(module_name("ext4.ko.zst").unwrap(), "ext4");
        assert_eq!(module_name("x.o"), None);
        let dep = parse_dep(DEP);
        let order = load_order(&dep, WANTED);
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko.xz",
            ]
        );
    }

    #[test]
    fn params_from_the_command_line() {
        let c = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 ext4.x=1 virtio_mmio.";
        assert_eq!(
            cmdline_params(c, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(cmdline_params(c, "overlay"), "");
    }

    #[test]
    fn hostile_dep_files() {
        let dep =
            parse_dep("../../etc/x.ko: a.ko\nvirtio_blk.ko: ../../x.ko b.ko\n:\n::\nno colon\n");
        assert!(!dep.contains_key("x"));
        assert_eq!(dep["virtio_blk"].1, ["b.ko"]);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"ab/.:- \nko_xz";
        for _ in 0..5_000 {
            let len = (next() % 300) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            let dep = parse_dep(&s);
            let _ = load_order(&dep, WANTED);
            let _ = cmdline_params(&s, "virtio_mmio");
        }
    }
}
