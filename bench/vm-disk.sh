#!/usr/bin/env bash
# VM root disk formats: build time and size of ext4 (mkfs.ext4 -d, no journal), erofs and
# erofs+lz4hc (mkfs.erofs) for a busybox rootfs and a bigger tree (python3, perl and /usr/sbin of
# this host, ~180 MB of many small files), with the options crates/vmm/src/disk.rs uses.
# Writes the "vm-disk" section of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/vm-section.sh
runs=${RUNS:-3}
work=$(mktemp -d /tmp/strata-vm-disk.XXXXXX)
trap 'rm -rf "$work"' EXIT

# busybox rootfs
bb=$work/busybox
mkdir -p "$bb"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$bb/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$bb/bin/$a"; done
# bigger rootfs
big=$work/big
mkdir -p "$big/usr/lib" "$big/usr/share"
cp -a /usr/lib/python3.11 "$big/usr/lib/"
cp -a /usr/share/perl "$big/usr/share/"
cp -a /usr/sbin "$big/usr/"

ext4() { # SRC OUT — the sizing rule of disk.rs: blocks + 1/7 + 256 B/inode + 4 MiB
  local src=$1 out=$2 bytes inodes size
  bytes=$(find "$src" -printf '%s\n' | awk '{b+=int(($1+4095)/4096)*4096} END{print b}')
  inodes=$(find "$src" | wc -l)
  size=$(( (bytes + bytes/7 + inodes*256 + 4*1048576 + 1048575) / 1048576 ))
  rm -f "$out"; truncate -s "${size}M" "$out"
  mkfs.ext4 -q -F -t ext4 -b 4096 -m 0 -O ^has_journal,^resize_inode -L strata -N $((inodes + inodes/10 + 64)) -d "$src" "$out"
}
erofs() { rm -f "$2"; mkfs.erofs --quiet -U 00000000-0000-0000-0000-000000000000 "$2" "$1" >/dev/null; }
erofs_lz4() { rm -f "$2"; mkfs.erofs --quiet -zlz4hc -U 00000000-0000-0000-0000-000000000000 "$2" "$1" >/dev/null; }

body=$work/section.md
{
  echo "## VM root disk images (bench/vm-disk.sh)"
  echo
  echo "Host: $(nproc) cores, $(uname -r). Build time: median of $runs runs (page cache warm); size: file size /"
  echo "allocated on the host. Source tree sizes are \`du -s --apparent-size\`."
  echo
  echo "| rootfs | format | build median (s) | file size (MiB) | allocated (MiB) |"
  echo "|---|---|---|---|---|"
} >"$body"
for tree in busybox big; do
  src=$work/$tree
  srcsize=$(du -s --apparent-size --block-size=1M "$src" | cut -f1)
  files=$(find "$src" | wc -l)
  for fmt in ext4 erofs erofs_lz4; do
    times=()
    for _ in $(seq "$runs"); do
      s=$(date +%s.%N); $fmt "$src" "$work/img"; e=$(date +%s.%N)
      times+=("$(echo "$e - $s" | bc)")
    done
    med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    fsize=$(( $(stat -c %s "$work/img") / 1048576 ))
    alloc=$(( $(stat -c %b "$work/img") * 512 / 1048576 ))
    printf '| %s (%s MiB, %s files) | %s | %.2f | %s | %s |\n' "$tree" "$srcsize" "$files" "${fmt/_/+}" "$med" "$fsize" "$alloc" >>"$body"
  done
done
cat >>"$body" <<'TXT'

Choice: ext4 (`disk::DEFAULT_FORMAT`). Uncompressed erofs builds as fast and is 5-20 % smaller
on disk, erofs+lz4hc halves the size but takes 6-7x longer to build and costs guest CPU on every
read; the image disk is built once per image, so build time matters less than compatibility:
Debian's UML kernel has erofs only as a module it cannot load, while ext4 works with both kernels.
`build_disk` also builds erofs/erofs+lz4 for callers that know the guest kernel (strata's has both
built in).
TXT
cat "$body"
vm_section vm-disk "$body"
