#!/usr/bin/env bash
# `strata run --rm busybox true` against `podman run --rm` and `docker run --rm` of the same image
# (one busybox layer made by umoci, loaded into all three from one docker-archive), with hyperfine.
# podman and dockerd use private temp roots; dockerd is started here and stopped at the end.
# Writes the "strata-run" section of docs/benchmarks.md.
#
# usage: bench/strata-run.sh            (RUNS=30 WARMUP=3 by default; STRATA_BIN to skip the build; root)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/strata-run.sh: needs root (namespaces, cgroups, mounts)" >&2; exit 1; }
bash scripts/engines-deps.sh
runs=${RUNS:-30}
warmup=${WARMUP:-3}
# STRATA_BIN=path measures a given build instead of building the release binary here.
if [ -z "${STRATA_BIN:-}" ]; then
  STRATA_BINS=strata bash scripts/build-release.sh -q
  STRATA_BIN=${CARGO_TARGET_DIR:-target}/release/strata
fi
work=$(mktemp -d /tmp/strata-run-bench-XXXXXX)
name=$(basename "$work")
strata_bin=$work/strata
dockerd_pid=

cleanup() {
  set +e
  "$strata_bin" --store "$work/store" --root "$work/run" ps -a -q 2>/dev/null |
    xargs -r "$strata_bin" --store "$work/store" --root "$work/run" rm -f >/dev/null 2>&1
  if [ -n "$dockerd_pid" ]; then kill "$dockerd_pid"; for _ in $(seq 50); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done; fi
  for p in $(grep -l "$work" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do kill -9 "$p" 2>/dev/null; done
  sleep 0.3
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  for d in /sys/fs/cgroup/*/"$name"; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; ; done
  rm -rf "$work"
}
trap cleanup EXIT
# Measured as installed: a copy, not the linker's output file (see bench/oci-run.sh).
install -m 0755 "$STRATA_BIN" "$strata_bin"

# The image: busybox-static as one layer, the same tar for every engine.
img=localhost/strata-busybox:bench
mkdir -p "$work/rootfs"/{bin,etc,tmp,root,proc,sys,dev}
cp /bin/busybox "$work/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
echo 'root:x:0:' >"$work/rootfs/etc/group"
umoci init --layout "$work/layout" >/dev/null
umoci new --image "$work/layout:b" >/dev/null
umoci insert --image "$work/layout:b" "$work/rootfs" / >/dev/null
umoci config --image "$work/layout:b" --config.cmd sh --config.env PATH=/bin >/dev/null
skopeo copy -q "oci:$work/layout:b" "docker-archive:$work/busybox.tar:$img"

strata="$strata_bin --store $work/store --root $work/run"
$strata --quiet load -i "$work/busybox.tar" >/dev/null

pm=$work/podman
podman="podman --root $pm/root --runroot $pm/runroot --tmpdir $pm/tmp --volumepath $pm/volumes \
  --network-config-dir $pm/networks --storage-driver vfs --cgroup-manager cgroupfs --events-backend file"
$podman load -i "$work/busybox.tar" >/dev/null 2>&1

dk=$work/docker
mkdir -p "$dk"
dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none --storage-driver=vfs \
  --data-root "$dk/data" --exec-root "$dk/exec" -H "unix://$dk/d.sock" --pidfile "$dk/pid" \
  --cgroup-parent "/$name" >"$dk/log" 2>&1 &
dockerd_pid=$!
docker="/usr/bin/docker -H unix://$dk/d.sock"
for _ in $(seq 300); do $docker version >/dev/null 2>&1 && break; sleep 0.2; done
$docker load -i "$work/busybox.tar" >/dev/null

declare -A cmds=(
  [strata]="$strata run --rm $img true"
  [podman]="$podman --runtime /usr/sbin/runc run --rm --network none --ulimit nofile=20000:20000 --ulimit nproc=30000:30000 --cgroup-parent /$name $img true"
  [docker]="$docker run --rm --network none $img true"
)
order=(strata podman docker)

results=$work/results.md
{
  echo "## strata run vs podman run vs docker run (bench/strata-run.sh)"
  echo
  echo "Host: $(nproc) cores (shared with other work), $(uname -r); load average at start:"
  echo "$(cut -d' ' -f1-3 /proc/loadavg). Each row: hyperfine (shell: none) wall time of \`run --rm IMAGE true\`"
  echo "for one busybox-static layer loaded from the same docker-archive, $runs runs after $warmup warm-ups."
  echo "strata is the release build (static-pie, scripts/build-release.sh); podman $(podman --version | awk '{print $3}') with runc (Debian's crun refuses this hybrid cgroup host)"
  echo "and vfs storage, cgroupfs; docker $($docker version -f '{{.Server.Version}}' 2>/dev/null) (dockerd started by the script, vfs)."
  echo "Target (issue 4): strata ≤ 0.1 × podman."
  echo
  echo "CPU columns are the user and system time of the command's own process tree as hyperfine"
  echo "measures it (daemons such as dockerd and containerd-shim are not included): unlike wall time,"
  echo "they do not grow with the load of the shared host."
  echo
  echo "| command | mean (ms) | σ (ms) | min (ms) | × strata | user CPU (ms) | system CPU (ms) |"
  echo "|---|---|---|---|---|---|---|"
} >"$results"

declare -A mean
for k in "${order[@]}"; do
  cmd=${cmds[$k]}
  if ! out=$(timeout 60 bash -c "$cmd" 2>&1); then
    echo "| $k | not measured: probe run failed: $(echo "$out" | tail -n 2 | tr '\n|' ' /' | cut -c1-160) | | | | | |" >>"$results"
    continue
  fi
  hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$work/$k.json" "$cmd" >/dev/null
  mean[$k]=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][0]['mean'])" "$work/$k.json")
done
for k in "${order[@]}"; do
  [ -f "$work/$k.json" ] || continue
  python3 - "$work/$k.json" "$k" "${mean[strata]:-0}" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
base = float(sys.argv[3])
ratio = f"{r['mean'] / base:.1f}" if base > 0 else "-"
print(f"| {sys.argv[2]} | {r['mean']*1e3:.1f} | {r['stddev']*1e3:.1f} | {r['min']*1e3:.1f} | {ratio} | {r['user']*1e3:.1f} | {r['system']*1e3:.1f} |")
PY
done
if [ -f "$work/strata.json" ] && [ -f "$work/podman.json" ]; then
  python3 - "$work/strata.json" "$work/podman.json" >>"$results" <<'PY'
import json, sys
s, p = (json.load(open(f))["results"][0]["mean"] for f in sys.argv[1:3])
print(f"\nstrata mean / podman mean = **{s / p:.3f}** (target ≤ 0.10)")
PY
fi
{
  echo
  cat <<'TXT'
Reading: compare rows of one run; wall time on this shared 2-core host grows with the load
average, the CPU columns much less. strata's start (CLI and runtime together, container init
included) is two starts of the strata binary (the CVE-2019-5736 re-exec from a detached
read-only mount of itself), the clone into namespaces, cgroups, the overlay mount and the
runtime's mounts; what each costs, and what was tried, is in the oci-run section (bench/oci-run-notes.md). The rest
of the wall time is waiting: for a CPU at each hand-over between processes when the host is
busy, for the disk when the container directory is removed (block discards on this host's
ext4), and in some runs for the kernel's RCU grace period when the init is moved into its
cgroups (8-12 ms here, podman's and docker's runtimes wait for it too).
TXT
  echo
  echo "Commands (\`\$T\` is the script's temp dir):"
  echo
  echo '```'
  for k in "${order[@]}"; do echo "${cmds[$k]}" | sed "s|$work|\$T|g"; done
  echo '```'
} >>"$results"

cat "$results"
source bench/vm-section.sh
vm_section strata-run "$results"
