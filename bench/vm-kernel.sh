#!/usr/bin/env bash
# strata's UML guest kernel: build time (from the build log of scripts/build-guest-kernel.sh, or a
# fresh build into a temporary cache with FRESH=1) and size next to Debian's user-mode-linux.
# Writes the "vm-kernel" section of docs/benchmarks.md (boot times are in the "vm-boot" section).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/vm-section.sh
work=$(mktemp -d /tmp/strata-vm-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ "${FRESH:-0}" = 1 ]; then
  kernel=$(STRATA_KERNEL_DIR="$work/kernels" bash scripts/build-guest-kernel.sh)
  load="load average after the build: $(cut -d' ' -f1-3 /proc/loadavg)"
else
  kernel=$(bash scripts/build-guest-kernel.sh)
  load="measured when it was built (the machine was shared with other builds)"
fi
dir=$(dirname "$kernel")
secs=$(sed -n 's/^# build took \([0-9]*\) s/\1/p' "$dir/build.log")
size() { echo "scale=1; $(stat -L -c %s "$1") / 1048576" | bc; }
linking() { if file -L "$1" | grep -q 'statically linked'; then echo static; else echo "dynamic (host glibc)"; fi; }
{
  echo "## UML guest kernel (bench/vm-kernel.sh)"
  echo
  echo "| kernel | version | linking | size (MiB) | build on this host |"
  echo "|---|---|---|---|---|"
  echo "| strata (\`scripts/build-guest-kernel.sh\`, guest/uml.config) | $(cat "$dir/version") | $(linking "$kernel") | $(size "$kernel") | ${secs} s with make -j$(nproc), $(nproc) cores ($load) |"
  echo "| Debian user-mode-linux (/usr/bin/linux) | $(/usr/bin/linux --version) | dynamic (host glibc) | $(size /usr/bin/linux) | none (package) |"
  echo
  echo "Choice: strata's kernel is the default when built (\`kernel::default_kernel\`), Debian's is the"
  echo "fallback. It boots faster (vm-boot section), has ext4/erofs/overlay built in (Debian's has erofs"
  echo "and overlay only as modules, which a guest without a module tree cannot load), no hostfs (the"
  echo "guest cannot even try to reach host files), and UML's vector network driver for VM networks"
  echo "(docs/networking.md). That driver forbids CONFIG_STATIC_LINK in 6.1, so it links the host's glibc"
  echo "like Debian's; the jail bind-mounts the loader and libraries read-only."
  echo "The first-run cost is the build; scripts/test.sh builds it once (cached under"
  echo "/var/lib/strata/kernels by the hash of guest/uml.config), which fits CI's 30-minute budget; a CI"
  echo "cache of that directory keyed by the fragment's hash would remove it from every later run."
  echo "Found while building the earlier static kernel: UML 6.1 needs \`GLIBC_TUNABLES=glibc.pthread.rseq=0\` (glibc's"
  echo "rseq registration is inherited by UML's ptrace stubs, which then die with SIGSEGV); strata sets it."
  echo "Found by a CI hang: guest/uml.config turns CONFIG_VMAP_STACK off (as Debian's kernel has it). With"
  echo "vmalloc'd kernel stacks, UML's to_irq_stack() can fault on a stack page the host process has not"
  echo "mapped, inside a signal handler where the fix-up never maps it, and the guest spins forever (about"
  echo "1 boot in 30 here)."
} >"$work/section.md"
cat "$work/section.md"
vm_section vm-kernel "$work/section.md"
