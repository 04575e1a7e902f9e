//! `strata run --kernel PATH [--initrd PATH]`: a VM on the qemu platform booting a kernel the user
//! brings — Debian's stock linux-image-amd64, whose virtio, ext4 and overlay drivers are modules
//! that reach the guest through an initrd this test builds, on a network too (virtio_net) — and bad
//! kernels refused before anything is created.

mod cli_common;

use std::path::{Path, PathBuf};

use cli_common::{output_timeout, text, Sandbox};

/// Debian's stock kernel and its release: the newest /boot/vmlinuz-*-amd64.
fn debian_stock_kernel() -> (PathBuf, String) {
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vmlinuz-") && n.ends_with("-amd64"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let name = found
        .pop()
        .expect("Debian's stock kernel: install linux-image-amd64 (scripts/deps.sh)");
    let release = name.trim_start_matches("vmlinuz-").to_string();
    (Path::new("/boot").join(name), release)
}

#[test]
fn run_boots_debians_stock_kernel_with_its_modules_from_an_initrd() {
    let s = Sandbox::new("container");
    let (kernel, release) = debian_stock_kernel();
    let modules = s.store.path().join("modules.cpio");
    strata_vmm::initramfs::module_initrd(
        &release,
        &Path::new("/lib/modules").join(&release),
        &[
            "virtio_mmio",
            "virtio_blk",
            "virtio_console",
            "virtio_rng",
            "crc32c_generic",
            "ext4",
            "overlay",
        ],
        &modules,
    )
    .unwrap();
    let k = kernel.to_str().unwrap();
    let m = modules.to_str().unwrap();
    // --kernel implies --vm --platform qemu.
    let out = s.ok(&[
        "run", "--rm", "--kernel", k, "--initrd", m, "busybox", "uname", "-r",
    ]);
    assert_eq!(out.trim(), release);
    s.assert_nothing_left(&[]);
}

/// A user's kernel with virtio-net as a module (Debian's) joins a network: the agent loads the
/// module from the initrd, the guest's eth0 gets the address the host got.
#[test]
fn debians_stock_kernel_joins_a_network_with_its_virtio_net_module() {
    let s = Sandbox::new("container");
    let (kernel, release) = debian_stock_kernel();
    let modules = s.store.path().join("modules-net.cpio");
    strata_vmm::initramfs::module_initrd(
        &release,
        &Path::new("/lib/modules").join(&release),
        &[
            "virtio_mmio",
            "virtio_blk",
            "virtio_console",
            "virtio_rng",
            "virtio_net",
            "crc32c_generic",
            "ext4",
            "overlay",
        ],
        &modules,
    )
    .unwrap();
    let conf = tempfile::tempdir().unwrap();
    let strata = |args: &[&str]| {
        let mut c = s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", conf.path()).args(args);
        output_timeout(c, None, std::time::Duration::from_secs(180))
    };
    let pid = std::process::id();
    let net = format!("dknet{pid}");
    let subnet = format!("10.189.{}.0/24", pid % 200 + 20);
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    };
    ok(strata(&["network", "create", "--subnet", &subnet, &net]));
    let out = strata(&[
        "run",
        "--rm",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        modules.to_str().unwrap(),
        "--network",
        &net,
        "busybox",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    let _ = strata(&["network", "rm", &net]);
    let out = ok(out);
    assert!(out.contains(&subnet[..subnet.len() - 4]), "{out}");
    // The network's own state directory stays with the root (leases, markers); no attachment
    // may be left in it.
    let net_state = s.root.path().join("net");
    let attachments: Vec<_> = std::fs::read_dir(net_state.join("attachments"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(attachments.is_empty(), "attachments left: {attachments:?}");
    std::fs::remove_dir_all(&net_state).unwrap();
    s.assert_nothing_left(&[]);
}

#[test]
fn bad_kernels_are_refused_before_anything_is_created() {
    let s = Sandbox::new("container");
    let dir = s.store.path();
    let junk = dir.join("junk-kernel");
    std::fs::write(&junk, vec![0x5au8; 100_000]).unwrap();
    let j = junk.to_str().unwrap();
    let (_, err) = s.fails(&["run", "--rm", "--kernel", j, "busybox", "true"]);
    assert!(
        err.contains("not an x86 bzImage") && err.contains("build-guest-kernel.sh qemu"),
        "{err}"
    );
    let (_, err) = s.fails(&[
        "run",
        "--rm",
        "--kernel",
        "/no/such/kernel",
        "busybox",
        "true",
    ]);
    assert!(err.contains("/no/such/kernel"), "{err}");
    // A kernel for another platform's kind of VM.
    let (_, err) = s.fails(&[
        "run",
        "--rm",
        "--platform",
        "uml",
        "--kernel",
        j,
        "busybox",
        "true",
    ]);
    assert!(err.contains("only the qemu platform"), "{err}");
    // Debian's kernel without the initrd that carries its virtio modules.
    let (kernel, _) = debian_stock_kernel();
    let (_, err) = s.fails(&[
        "run",
        "--rm",
        "--kernel",
        kernel.to_str().unwrap(),
        "busybox",
        "true",
    ]);
    assert!(
        err.contains("as modules") && err.contains("--initrd"),
        "{err}"
    );
    // --initrd belongs to --kernel.
    let (_, err) = s.fails(&["run", "--rm", "--vm", "--initrd", j, "busybox", "true"]);
    assert!(err.contains("--kernel"), "{err}");
    s.assert_nothing_left(&[]);
}
