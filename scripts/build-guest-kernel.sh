#!/usr/bin/env bash
# Builds strata's User-Mode Linux guest kernel from Debian's linux-source with guest/uml.config merged
# over the UML defconfig, into a cache directory keyed by source version and fragment hash:
#   $STRATA_KERNEL_DIR (default /var/lib/strata/kernels)/uml-<version>-<hash>/linux
# Idempotent: when the kernel is already there it only prints its path. The path of the kernel is the
# only line on stdout; the build's output goes to build.log next to it (or the temp dir on failure).
# A fresh build takes ~10 minutes on 2 cores (see docs/benchmarks.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fragment=${STRATA_UML_CONFIG:-$root/guest/uml.config}
source_tar=${STRATA_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
cache=${STRATA_KERNEL_DIR:-/var/lib/strata/kernels}

die() { echo "build-guest-kernel: $*" >&2; exit 1; }
[ -r "$fragment" ] || die "config fragment $fragment not found"
[ -r "$source_tar" ] || die "kernel source $source_tar not found: install linux-source-6.1 (scripts/deps.sh)"
for tool in make gcc flex bison bc xz sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/deps.sh"
done

# Version: the Debian package version of the source when it is packaged, else the tarball name.
pkg=$(dpkg-query -S "$source_tar" 2>/dev/null | cut -d: -f1 || true)
if [ -n "$pkg" ]; then
  version=$(dpkg-query -W -f='${Version}' "$pkg")
else
  version=$(basename "$source_tar" .tar.xz)
fi
hash=$(sha256sum "$fragment" | cut -c1-12)
out="$cache/uml-$version-$hash"

if [ -x "$out/linux" ]; then echo "$out/linux"; exit 0; fi
mkdir -p "$cache"
# One build at a time per cache (parallel test runs wait for the first build instead of racing it).
exec 9>"$cache/.build.lock"
flock 9
if [ -x "$out/linux" ]; then echo "$out/linux"; exit 0; fi

work=$(mktemp -d "$cache/.build-uml-XXXXXX")
log="$work/build.log"
# On failure keep only the log (the source tree is 1.4 GB).
fail_log="$cache/uml-build-failed.log"
trap 'cp -f "$log" "$fail_log" 2>/dev/null; cd /; rm -rf "$work"; echo "build-guest-kernel: failed, see $fail_log" >&2' ERR
start=$(date +%s)
{
  echo "# source $source_tar ($version), fragment $fragment ($hash)"
  tar -xJf "$source_tar" -C "$work" --strip-components=1
  cd "$work"
  make ARCH=um SUBARCH=x86_64 defconfig
  ARCH=um SUBARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment"
  make ARCH=um SUBARCH=x86_64 olddefconfig
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

make ARCH=um SUBARCH=x86_64 -j"$(nproc)" linux >>"$log" 2>&1
strip linux >>"$log" 2>&1
echo "# build took $(( $(date +%s) - start )) s" >>"$log"

# Publish atomically: a reader sees either no kernel or a complete one.
stage=$(mktemp -d "$cache/.stage-XXXXXX")
install -m 0755 linux "$stage/linux"
cp .config "$stage/config"
cp "$log" "$stage/build.log"
make -s ARCH=um SUBARCH=x86_64 kernelrelease >"$stage/version"
echo "$version" >"$stage/source-version"
chmod 0755 "$stage"
rm -rf "$out"
mv "$stage" "$out"
cd /
rm -rf "$work"
echo "$out/linux"
