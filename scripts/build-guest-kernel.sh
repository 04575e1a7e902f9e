#!/usr/bin/env bash
# Builds one of strata's guest kernels from Debian's linux-source with a config fragment from guest/
# merged over a base config, into a cache directory keyed by platform, source version and fragment hash:
#   scripts/build-guest-kernel.sh [uml]   User-Mode Linux (ARCH=um), guest/uml.config over defconfig:
#     $STRATA_KERNEL_DIR (default /var/lib/strata/kernels)/uml-<version>-<hash>/linux
#   scripts/build-guest-kernel.sh qemu    x86_64 bzImage for QEMU microvm, guest/qemu.config over
#     tinyconfig: .../qemu-<version>-<hash>/bzImage (+ vmlinux for PVH boot, modules/lib/modules/<release>)
# Idempotent: when the kernel is already there it only prints its path. The path of the kernel is the
# only line on stdout; the build's output goes to build.log next to it (or the temp dir on failure).
# A fresh build takes ~10 minutes (uml) / ~6 minutes (qemu) on 2 cores (see docs/benchmarks.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
platform=${1:-uml}
case "$platform" in
  uml)
    fragment=${STRATA_UML_CONFIG:-$root/guest/uml.config}
    patches=$root/guest/uml-patches
    arch=(ARCH=um SUBARCH=x86_64); base=defconfig; targets=(linux); artifact=linux; built=linux
    lockname=.build.lock ;;
  qemu)
    fragment=${STRATA_QEMU_CONFIG:-$root/guest/qemu.config}
    patches=$root/guest/qemu-patches
    arch=(ARCH=x86_64); base=tinyconfig; targets=(bzImage vmlinux modules); artifact=bzImage
    built=arch/x86/boot/bzImage; lockname=.build-qemu.lock ;;
  *) echo "build-guest-kernel: unknown platform '$platform' (use uml or qemu)" >&2; exit 2 ;;
esac
source_tar=${STRATA_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
cache=${STRATA_KERNEL_DIR:-/var/lib/strata/kernels}

die() { echo "build-guest-kernel: $*" >&2; exit 1; }
[ -r "$fragment" ] || die "config fragment $fragment not found"
[ -r "$source_tar" ] || die "kernel source $source_tar not found: install linux-source-6.1 (scripts/deps.sh)"
for tool in make gcc flex bison bc xz sha256sum patch; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/deps.sh"
done

# Version: the Debian package version of the source when it is packaged, else the tarball name.
pkg=$(dpkg-query -S "$source_tar" 2>/dev/null | cut -d: -f1 || true)
if [ -n "$pkg" ]; then
  version=$(dpkg-query -W -f='${Version}' "$pkg")
else
  version=$(basename "$source_tar" .tar.xz)
fi
# Patches to the kernel source (guest/<platform>-patches/*.patch, applied in name order with
# patch -p1): part of the cache key, so a changed patch builds a new kernel. Without patches
# the key is the fragment's hash alone (crates/vmm/src/kernel.rs computes the same).
patch_files=()
if [ -d "$patches" ]; then
  while IFS= read -r f; do patch_files+=("$f"); done < <(find "$patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
fi
hash=$(cat "$fragment" "${patch_files[@]}" | sha256sum | cut -c1-12)
out="$cache/$platform-$version-$hash"

if [ -s "$out/$artifact" ]; then echo "$out/$artifact"; exit 0; fi
mkdir -p "$cache"
# One build at a time per platform and cache (parallel test runs wait for the first build instead of
# racing it).
exec 9>"$cache/$lockname"
flock 9
if [ -s "$out/$artifact" ]; then echo "$out/$artifact"; exit 0; fi

work=$(mktemp -d "$cache/.build-$platform-XXXXXX")
log="$work/build.log"
# On failure keep only the log (the source tree is 1.4 GB).
fail_log="$cache/$platform-build-failed.log"
trap 'cp -f "$log" "$fail_log" 2>/dev/null; cd /; rm -rf "$work"; echo "build-guest-kernel: failed, see $fail_log" >&2' ERR
start=$(date +%s)
{
  echo "# $platform kernel: source $source_tar ($version), fragment $fragment ($hash)"
  tar -xJf "$source_tar" -C "$work" --strip-components=1
  cd "$work"
  for p in "${patch_files[@]}"; do echo "# patch $p"; patch -p1 --forward <"$p"; done
  make "${arch[@]}" "$base"
  env "${arch[@]}" scripts/kconfig/merge_config.sh -m .config "$fragment"
  make "${arch[@]}" olddefconfig
} >"$log" 2>&1
cd "$work"

# Every option the fragment asks for must have survived Kconfig's dependency resolution.
mismatch=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=n) sym=${line%=n}; grep -q "^$sym=" .config && mismatch+=("$line (got $(grep "^$sym=" .config))") ;;
    CONFIG_*=*) grep -qx "$line" .config || mismatch+=("$line (got $(grep "^${line%%=*}=" .config || echo 'not set'))") ;;
  esac
done < <(grep -E '^CONFIG_' "$fragment")
if [ "${#mismatch[@]}" -ne 0 ]; then
  cp -f "$log" "$fail_log"; cd /; rm -rf "$work"
  die "Kconfig did not accept: ${mismatch[*]} (fix $fragment; log $fail_log)"
fi

make "${arch[@]}" -j"$(nproc)" "${targets[@]}" >>"$log" 2>&1
[ "$platform" = uml ] && strip linux >>"$log" 2>&1
echo "# build took $(( $(date +%s) - start )) s" >>"$log"

# Publish atomically: a reader sees either no kernel or a complete one.
stage=$(mktemp -d "$cache/.stage-XXXXXX")
install -m 0644 "$built" "$stage/$artifact"
[ "$platform" = uml ] && chmod 0755 "$stage/$artifact"
if [ "$platform" = qemu ]; then
  # vmlinux (ELF with a PVH entry note) for QEMU's direct PVH boot, without symbols.
  strip -o "$stage/vmlinux" vmlinux >>"$log" 2>&1
  make "${arch[@]}" INSTALL_MOD_PATH="$stage/modules" INSTALL_MOD_STRIP=1 DEPMOD=/bin/true \
    modules_install >>"$log" 2>&1
  rm -f "$stage"/modules/lib/modules/*/build "$stage"/modules/lib/modules/*/source
  # Symbols for reading a boot traced with initcall_debug (the vmlinux above is stripped).
  install -m 0644 System.map "$stage/System.map"
fi
cp .config "$stage/config"
cp "$log" "$stage/build.log"
make -s "${arch[@]}" kernelrelease >"$stage/version"
echo "$version" >"$stage/source-version"
chmod 0755 "$stage"
rm -rf "$out"
mv "$stage" "$out"
cd /
rm -rf "$work"
echo "$out/$artifact"
