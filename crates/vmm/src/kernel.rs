//! Guest kernels per platform (`strata kernel list`): the ones strata built with
//! scripts/build-guest-kernel.sh (under the kernel cache) and the distribution's.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Default kernel cache of scripts/build-guest-kernel.sh (`STRATA_KERNEL_DIR` overrides it).
pub const DEFAULT_KERNEL_DIR: &str = "/var/lib/strata/kernels";
/// Debian's `user-mode-linux` package.
pub const DEBIAN_UML_KERNEL: &str = "/usr/bin/linux";

/// One guest kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelInfo {
    /// The platform it boots on (`uml`, `qemu`).
    pub platform: &'static str,
    /// The kernel file.
    pub path: PathBuf,
    /// Its version (kernel release, or the source package version for built kernels).
    pub version: String,
    /// Where it comes from.
    pub source: String,
    /// File size in bytes.
    pub size: u64,
}

/// The config fragment strata's UML kernel is built with (scripts/build-guest-kernel.sh).
pub const UML_CONFIG_FRAGMENT: &str = include_str!("../../../guest/uml.config");

/// The config fragment strata's QEMU kernel is built with (`scripts/build-guest-kernel.sh qemu`).
pub const QEMU_CONFIG_FRAGMENT: &str = include_str!("../../../guest/qemu.config");

/// The patches strata's UML kernel source gets (guest/uml-patches/, in name order; the build
/// script applies every `*.patch` there, and a test checks this list is that directory).
pub const UML_KERNEL_PATCHES: &[(&str, &str)] = &[
    (
        "0001-um-map-the-fault-around-window.patch",
        include_str!("../../../guest/uml-patches/0001-um-map-the-fault-around-window.patch"),
    ),
    (
        "0002-um-read-fd-channels-in-bulk.patch",
        include_str!("../../../guest/uml-patches/0002-um-read-fd-channels-in-bulk.patch"),
    ),
];

/// The same for the QEMU kernel (guest/qemu-patches/): none.
pub const QEMU_KERNEL_PATCHES: &[(&str, &str)] = &[];

/// The cache key of a kernel: the first 12 hex digits of the sha256 of its config fragment
/// followed by its patches (`cat fragment patches... | sha256sum`, as the build script does).
fn kernel_hash(fragment: &str, patches: &[(&str, &str)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(fragment.as_bytes());
    for (_, p) in patches {
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash that names a kernel built from this strata's guest/uml.config and
/// guest/uml-patches in the cache.
pub fn uml_config_hash() -> String {
    kernel_hash(UML_CONFIG_FRAGMENT, UML_KERNEL_PATCHES)
}

/// The same for guest/qemu.config (and guest/qemu-patches).
pub fn qemu_config_hash() -> String {
    kernel_hash(QEMU_CONFIG_FRAGMENT, QEMU_KERNEL_PATCHES)
}

/// The kernel cache directory (`STRATA_KERNEL_DIR`, else [`DEFAULT_KERNEL_DIR`]).
pub fn kernel_dir() -> PathBuf {
    std::env::var_os("STRATA_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL_DIR))
}

/// Every guest kernel found on this host, strata-built ones first (newest first).
pub fn list_kernels() -> Vec<KernelInfo> {
    let mut out = list_built(&kernel_dir());
    if let Some(k) = debian_uml(Path::new(DEBIAN_UML_KERNEL)) {
        out.push(k);
    }
    out
}

/// The kernel a platform uses by default: strata's own build (faster to boot, everything built
/// in, no hostfs, see docs/benchmarks.md) when present, else the distribution's.
pub fn default_kernel(platform: &str) -> Option<KernelInfo> {
    // On every VM start: strata's own build is found without executing the distribution's
    // kernel for its version (`linux --version`, tens of ms under load).
    list_built(&kernel_dir())
        .into_iter()
        .find(|k| k.platform == platform)
        .or_else(|| list_kernels().into_iter().find(|k| k.platform == platform))
}

/// Kernels built by scripts/build-guest-kernel.sh in `dir`: `uml-<version>-<hash>/linux` and
/// `qemu-<version>-<hash>/bzImage`, with a `version` file. Per platform, the one built from this
/// strata's fragment comes first (a kernel built from an older or newer fragment may lack what
/// this strata needs, or have what it avoids), then the others, newest first.
///
/// Every VM start asks (the platform checks, then the boot): the listing (a directory read and
/// a `version` file per kernel) is kept for this process while the directory's mtime stays the
/// same; the build script publishes a kernel by renaming its directory into `dir`, which
/// changes it.
pub fn list_built(dir: &Path) -> Vec<KernelInfo> {
    type Listing = (PathBuf, std::time::SystemTime, Vec<KernelInfo>);
    static CACHE: std::sync::Mutex<Option<Listing>> = std::sync::Mutex::new(None);
    let mtime = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(m), Some((d, t, list))) = (mtime, cache.as_ref()) {
        if d == dir && *t == m {
            return list.clone();
        }
    }
    let mut all = list_built_preferring(dir, &uml_config_hash(), "uml");
    all.extend(list_built_preferring(dir, &qemu_config_hash(), "qemu"));
    if let Some(m) = mtime {
        *cache = Some((dir.to_path_buf(), m, all.clone()));
    }
    all
}

fn list_built_preferring(
    dir: &Path,
    preferred_hash: &str,
    platform: &'static str,
) -> Vec<KernelInfo> {
    let (prefix, file, fragment) = match platform {
        "qemu" => ("qemu-", "bzImage", "guest/qemu.config"),
        _ => ("uml-", "linux", "guest/uml.config"),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(bool, std::time::SystemTime, KernelInfo)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue; // another platform's; dot-files are builds in progress
        };
        let path = entry.path().join(file);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let hash = rest.rsplit('-').next().unwrap_or("");
        let version = std::fs::read_to_string(entry.path().join("version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| rest.to_string());
        found.push((
            hash == preferred_hash,
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            KernelInfo {
                platform,
                path,
                version,
                source: format!("built from linux-source with {fragment} ({hash})"),
                size: meta.len(),
            },
        ));
    }
    found.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
    found.into_iter().map(|(_, _, k)| k).collect()
}

fn debian_uml(path: &Path) -> Option<KernelInfo> {
    let real = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    // The binary's --version is instant; it prints the kernel release.
    let version = std::process::Command::new(&real)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() < 64)
        .unwrap_or_else(|| "unknown".into());
    Some(KernelInfo {
        platform: "uml",
        path: path.to_path_buf(),
        version,
        source: "Debian user-mode-linux package".into(),
        size: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_kernels_are_listed_and_builds_in_progress_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("uml-6.1.192-2-abcdef012345");
        std::fs::create_dir(&k).unwrap();
        std::fs::write(k.join("linux"), b"elf").unwrap();
        std::fs::write(k.join("version"), b"6.1.192\n").unwrap();
        std::fs::create_dir(dir.path().join(".build-uml-x")).unwrap();
        std::fs::create_dir(dir.path().join("uml-empty")).unwrap();
        let list = list_built(dir.path());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].version, "6.1.192");
        assert_eq!(list[0].size, 3);
        assert!(list[0].source.contains("abcdef012345"));
        assert!(list_built(&dir.path().join("missing")).is_empty());
    }

    /// The listing kept between calls follows the directory: a kernel published later (the
    /// build script renames its directory in) or removed is seen at the next call.
    #[test]
    fn a_kept_listing_sees_kernels_published_or_removed_since() {
        let dir = tempfile::tempdir().unwrap();
        fake_kernel(dir.path(), "aaaaaaaaaaaa", 10);
        assert_eq!(list_built(dir.path()).len(), 1);
        assert_eq!(list_built(dir.path()).len(), 1);
        let stage = tempfile::tempdir_in(dir.path()).unwrap();
        fake_kernel(stage.path(), "bbbbbbbbbbbb", 0);
        std::fs::rename(
            stage.path().join("uml-6.1.192-2-bbbbbbbbbbbb"),
            dir.path().join("uml-6.1.192-2-bbbbbbbbbbbb"),
        )
        .unwrap();
        assert_eq!(list_built(dir.path()).len(), 2);
        std::fs::remove_dir_all(dir.path().join("uml-6.1.192-2-aaaaaaaaaaaa")).unwrap();
        let list = list_built(dir.path());
        assert_eq!(list.len(), 1);
        assert!(list[0].source.contains("bbbbbbbbbbbb"), "{list:?}");
    }

    fn fake_kernel(dir: &Path, hash: &str, age_secs: u64) {
        let k = dir.join(format!("uml-6.1.192-2-{hash}"));
        std::fs::create_dir(&k).unwrap();
        let f = std::fs::File::create(k.join("linux")).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
        f.set_modified(t).unwrap();
    }

    #[test]
    fn the_kernel_of_this_config_wins_over_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        fake_kernel(dir.path(), "111111111111", 300);
        fake_kernel(dir.path(), "222222222222", 10); // newest
        fake_kernel(dir.path(), "333333333333", 100);
        let order = |hash: &str| -> Vec<String> {
            list_built_preferring(dir.path(), hash, "uml")
                .iter()
                .map(|k| k.source.clone())
                .collect()
        };
        let got = order("333333333333");
        assert!(got[0].contains("333333333333"), "{got:?}");
        assert!(got[1].contains("222222222222"), "{got:?}");
        assert!(got[2].contains("111111111111"), "{got:?}");
        // No kernel of this config: the newest.
        let got = order("444444444444");
        assert!(got[0].contains("222222222222"), "{got:?}");
    }

    #[test]
    fn config_hash_is_the_build_scripts() {
        // scripts/build-guest-kernel.sh names the cache entry with
        // `cat fragment patches... | sha256sum | cut -c1-12`, the patches being every
        // guest/<platform>-patches/*.patch in name order.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (platform, patches, got) in [
            ("uml", UML_KERNEL_PATCHES, uml_config_hash()),
            ("qemu", QEMU_KERNEL_PATCHES, qemu_config_hash()),
        ] {
            let mut on_disk: Vec<String> =
                std::fs::read_dir(repo.join(format!("guest/{platform}-patches")))
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.ends_with(".patch"))
                            .collect()
                    })
                    .unwrap_or_default();
            on_disk.sort();
            let listed: Vec<&str> = patches.iter().map(|(n, _)| *n).collect();
            assert_eq!(on_disk, listed, "guest/{platform}-patches vs kernel.rs");
            let mut cat = format!(
                "cat {}",
                repo.join(format!("guest/{platform}.config")).display()
            );
            for n in &listed {
                cat += &format!(
                    " {}",
                    repo.join(format!("guest/{platform}-patches/{n}")).display()
                );
            }
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("{cat} | sha256sum")])
                .output()
                .unwrap();
            assert_eq!(
                got,
                String::from_utf8(out.stdout).unwrap()[..12],
                "{platform}"
            );
        }
    }

    #[test]
    fn qemu_kernels_are_listed_for_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("qemu-6.1.192-3-abcdef012345");
        std::fs::create_dir(&k).unwrap();
        std::fs::write(k.join("bzImage"), b"bz").unwrap();
        std::fs::write(k.join("version"), b"6.1.192-strata\n").unwrap();
        let list = list_built(dir.path());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].platform, "qemu");
        assert!(list[0].path.ends_with("bzImage"));
        assert!(list[0].source.contains("guest/qemu.config"));
    }
}

/// Whether the ELF executable `data` (its first bytes, at least the program headers) asks for a
/// program interpreter (is dynamically linked). None if it is not a 64-bit little-endian ELF or
/// its program headers lie outside `data`. The kernel file is user-chosen (`--kernel`), so this
/// parser never panics (fuzzed: fuzz/fuzz_targets/elf_header.rs).
pub fn elf_is_dynamic(data: &[u8]) -> Option<bool> {
    let u16_at = |o: usize| {
        data.get(o..o.checked_add(2)?)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        data.get(o..o.checked_add(4)?)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o.checked_add(8)?)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    if data.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 4 {
        return None;
    }
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        const PT_INTERP: u32 = 3;
        if u32_at(off)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The shared libraries (and program interpreter) a dynamically linked kernel needs, as host
/// paths, from `ldd`. Empty for a static kernel.
pub(crate) fn shared_libraries(kernel: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(kernel)?.read(&mut head)?;
    head.truncate(n);
    match elf_is_dynamic(&head) {
        Some(true) => {}
        Some(false) => return Ok(Vec::new()),
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a 64-bit ELF executable (a UML kernel is the `linux` binary)",
            ))
        }
    }
    let out = std::process::Command::new("ldd")
        .arg(kernel)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()?;
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let t = rest.split_whitespace().next().unwrap_or("");
                if t == "not" {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("shared library {} not found", name.trim()),
                    ));
                }
                t
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if target.starts_with('/') {
            libs.push(PathBuf::from(target));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod elf_tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let libs = parse_ldd(
            "\tlinux-vdso.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n",
        )
        .unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn elf_detection() {
        let ls = std::fs::read("/bin/ls").unwrap();
        assert_eq!(elf_is_dynamic(&ls), Some(true));
        let bb = std::fs::read("/bin/busybox").unwrap();
        assert_eq!(elf_is_dynamic(&bb), Some(false));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh"), None);
        assert_eq!(elf_is_dynamic(&ls[..40]), None);
        // Hostile headers: huge counts and offsets never panic.
        let mut h = ls[..64].to_vec();
        h[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        h[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(elf_is_dynamic(&h), None);
    }

    /// The fuzz target's entry over a deterministic corpus of random and mutated headers, so the
    /// stable test run exercises it even where cargo-fuzz is unavailable.
    #[test]
    fn elf_parser_survives_hostile_corpus() {
        let seed_elf = std::fs::read("/bin/ls").unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let len = (next() % 4096) as usize;
            let mut data: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                seed_elf[..len.min(seed_elf.len())].to_vec()
            };
            if data.len() >= 6 && i % 3 == 0 {
                data[..6].copy_from_slice(b"\x7fELF\x02\x01");
            }
            for _ in 0..(next() % 8) {
                if !data.is_empty() {
                    let at = (next() as usize) % data.len();
                    data[at] = next() as u8;
                }
            }
            let _ = elf_is_dynamic(&data);
        }
    }
}
