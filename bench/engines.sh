#!/usr/bin/env bash
# Engine-driven start-up cost: `ctr run --rm`, `docker run --rm` and `podman run --rm` of busybox
# `true`, each with strata-oci (container layer, and VM layer: `--annotation dev.strata.isolation=vm`
# for ctr and podman, a daemon.json runtime `strata-vm` with runtimeArgs `--vm` for docker), crun
# and runc as the runtime, side by side with hyperfine.
# Engines are started privately (temp roots and sockets, as crates/cli/tests/engines_*.rs do) and
# torn down at the end. strata-oci is measured only where one probe run through that engine works;
# otherwise its row says why. Writes the "engines" section of docs/benchmarks.md.
#
# usage: bench/engines.sh            (RUNS=20 WARMUP=3 by default; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/engines.sh: needs root (engines, cgroups, mounts)" >&2; exit 1; }
bash scripts/engines-deps.sh
runs=${RUNS:-20}
warmup=${WARMUP:-3}
STRATA_BINS=strata-oci bash scripts/build-release.sh -q
# The VM rows need the static guest agent (found next to the release target) and a guest kernel.
bash scripts/build-agent.sh >/dev/null
target=${CARGO_TARGET_DIR:-target}
strata=$(realpath "$target/release/strata-oci")
runc=/usr/sbin/runc
crun=/usr/bin/crun

work=$(mktemp -d /tmp/se-bench-XXXXXX)
name=$(basename "$work")
pids=()
hugetlb_mounted=0
hugetlb_dir_made=0

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 2
  # Anything still running from the sandbox (shims, conmon, containers), then its mounts and cgroups.
  for p in $(grep -l "$work" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do kill -9 "$p" 2>/dev/null; done
  for p in $(grep -l ":/$name" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3); do kill -9 "$p" 2>/dev/null; done
  sleep 0.5
  # containerd shims listen outside the sandbox; each recorded its socket in an `address` file.
  for f in $(find "$work" -name address -not -path '*/rootfs/*' 2>/dev/null); do
    s=$(sed 's|^unix://||' "$f"); case $s in /run/containerd/s/*) rm -f "$s" ;; esac
  done
  # podman passes no --root: its containers' runtime state lives in the runtimes' default roots.
  for f in $(grep -l "$work" /run/strata/*/state.json /run/runc/*/state.json 2>/dev/null); do rm -rf "$(dirname "$f")"; done
  # VMs: their strata-oci state (under the sandbox, or /run/strata/vm for podman) lists their host
  # cgroups strata-vm/<id>, outside the sandbox's cgroup parent: thaw, empty, remove.
  for f in $(find "$work" -path '*/vm/*/state.json' 2>/dev/null) $(grep -l "$work" /run/strata/vm/*/state.json 2>/dev/null); do
    for d in $(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1])).get("cgroup_dirs", [])))' "$f" 2>/dev/null); do
      case $d in */strata-vm/*) ;; *) continue ;; esac
      [ -d "$d" ] || continue
      [ -e "$d/freezer.state" ] && echo THAWED >"$d/freezer.state"
      for p in $(cat "$d/cgroup.procs"); do kill -9 "$p" 2>/dev/null; done
      for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$d" 2>/dev/null && break; sleep 0.2; done
    done
    case $f in /run/strata/vm/*) rm -rf "$(dirname "$f")" ;; esac
  done
  for c in memory pids freezer cpu; do rmdir "/sys/fs/cgroup/$c/strata-vm" 2>/dev/null; done
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  for d in /sys/fs/cgroup/*/"$name"; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; ; done
  [ "$hugetlb_mounted" = 1 ] && umount /sys/fs/cgroup/hugetlb
  [ "$hugetlb_dir_made" = 1 ] && rmdir /sys/fs/cgroup/hugetlb
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# crun refuses this hybrid host unless a hugetlb hierarchy exists; mount one for the run, undo after.
# (Not possible when hugetlb is enabled in the cgroup2 hierarchy; crun's probe run then says why.)
# Never leave a plain directory there: runtimes would take it for a hierarchy and write into it.
if [ ! -d /sys/fs/cgroup/hugetlb ]; then
  mkdir /sys/fs/cgroup/hugetlb
  if mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null; then
    hugetlb_mounted=1 hugetlb_dir_made=1
  else
    rmdir /sys/fs/cgroup/hugetlb
  fi
fi

# The busybox image, built offline (same recipe as crates/cli/tests/engines/image.rs).
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

# containerd (CRI off), then dockerd on it.
cd_dir=$work/containerd
mkdir -p "$cd_dir"
cat >"$cd_dir/config.toml" <<EOF
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$cd_dir/c.sock"
[ttrpc]
  address = "$cd_dir/c.sock.ttrpc"
[debug]
  address = "$cd_dir/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$cd_dir/opt"
EOF
containerd --config "$cd_dir/config.toml" >"$cd_dir/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do ctr -a "$cd_dir/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr="ctr -a $cd_dir/c.sock -n $name"
$ctr images import "$work/busybox.tar" >/dev/null

dk=$work/docker
mkdir -p "$dk"
# docker 20.10 has no --annotation: the VM layer is a runtime whose args select it.
printf '{"runtimes": {"strata-vm": {"path": "%s", "runtimeArgs": ["--vm"]}}}\n' "$strata" >"$dk/daemon.json"
dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none --storage-driver=vfs \
  --data-root "$dk/data" --exec-root "$dk/exec" -H "unix://$dk/d.sock" --containerd "$cd_dir/c.sock" \
  --pidfile "$dk/pid" --cgroup-parent "/$name" --config-file "$dk/daemon.json" \
  --add-runtime "strata=$strata" --add-runtime "crun=$crun" --add-runtime "runc-debian=$runc" \
  >"$dk/log" 2>&1 &
pids+=($!)
docker="/usr/bin/docker -H unix://$dk/d.sock"
for _ in $(seq 300); do $docker version >/dev/null 2>&1 && break; sleep 0.2; done
$docker load -i "$work/busybox.tar" >/dev/null

pm=$work/podman
podman="podman --root $pm/root --runroot $pm/runroot --tmpdir $pm/tmp --volumepath $pm/volumes \
  --network-config-dir $pm/networks --storage-driver vfs --cgroup-manager cgroupfs --events-backend file"
podman_run="run --rm --network none --ulimit nofile=20000:20000 --ulimit nproc=30000:30000 --cgroup-parent /$name"
$podman load -i "$work/busybox.tar" >/dev/null 2>&1

# One command per engine × runtime; `$$` (the shell hyperfine starts) makes container ids unique.
declare -A cmds
vm_annotation="--annotation dev.strata.isolation=vm"
for rt in strata strata-vm crun runc; do
  ann=
  case $rt in
    strata) bin=$strata dname=strata ;;
    strata-vm) bin=$strata dname=strata-vm ann=$vm_annotation ;;
    crun) bin=$crun dname=crun ;;
    runc) bin=$runc dname=runc-debian ;;
  esac
  cmds[ctr-$rt]="$ctr run --rm --runc-binary $bin --runc-root $work/rr-$rt $ann $img b\$\$ true"
  cmds[docker-$rt]="$docker run --rm --runtime $dname --network none $img true"
  cmds[podman-$rt]="$podman --runtime $bin $podman_run $ann $img true"
done

results=$work/results.md
{
  echo "## Engines driving the runtime (bench/engines.sh)"
  echo
  echo "Host: $(nproc) cores, $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (the machine"
  echo "is shared, so compare rows of one table, not across runs). Each row: hyperfine (shell: bash)"
  echo "wall time of one full engine round trip for busybox \`true\` (create, start, wait, delete),"
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo "this tree")
  echo "$runs runs after $warmup warm-ups. strata-oci is the release build of $commit; each row includes"
  echo "everything the engine does around the runtime (shim or conmon, image snapshot, cgroups)."
  echo "\`strata-vm\` is strata-oci with VM isolation: a UML guest is booted for every run (disk of the"
  echo "container's rootfs, kernel boot, agent, workload, power-off)."
  echo
  echo "| engine | runtime | mean (ms) | σ (ms) | min (ms) |"
  echo "|---|---|---|---|---|"
} >"$results"

for eng in ctr docker podman; do
  for rt in strata strata-vm crun runc; do
    cmd=${cmds[$eng-$rt]}
    # -k: attached docker/ctr clients forward SIGTERM to the container instead of exiting.
    rc=0
    out=$(timeout -k 5 30 bash -c "$cmd" 2>&1) || rc=$?
    if [ "$rc" != 0 ]; then
      why=$(echo "$out" | tail -n 2 | tr '\n|' ' /' | cut -c1-160)
      case $rc in 124 | 137) why="timed out after 30 s $why" ;; esac
      echo "| $eng | $rt | not measured: probe run failed: $why | | |" >>"$results"
      continue
    fi
    json=$work/$eng-$rt.json
    hyperfine -S bash --warmup "$warmup" --runs "$runs" --export-json "$json" "$cmd" >/dev/null
    python3 - "$json" "$eng" "$rt" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['mean']*1e3:.0f} | {r['stddev']*1e3:.0f} | {r['min']*1e3:.0f} |")
PY
  done
done

{
  echo
  echo "Commands (paths shortened; \`\$T\` is the script's temp dir):"
  echo
  echo '```'
  for k in ctr-strata docker-strata podman-strata ctr-strata-vm docker-strata-vm podman-strata-vm; do
    echo "${cmds[$k]}" | sed "s|$work|\$T|g"
  done
  echo '```'
} >>"$results"

cat "$results"
doc=docs/benchmarks.md
python3 - "$doc" "$results" <<'PY'
import os, sys
doc, body_file = sys.argv[1:3]
body = open(body_file).read().rstrip("\n")
start, end = "<!-- engines:start -->", "<!-- engines:end -->"
text = open(doc).read() if os.path.exists(doc) else "# strata benchmarks\n"
block = f"{start}\n{body}\n{end}"
if start in text and end in text:
    text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(doc + ".tmp", "w").write(text)
os.replace(doc + ".tmp", doc)
PY
