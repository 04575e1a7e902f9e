#!/usr/bin/env bash
# Network throughput side by side, in one run: wrk against nginx and redis-benchmark against
# redis-server through a published port (-p 127.0.0.1:PORT:...) from the host, and iperf3 between
# two instances on one network, for
#   - host-native (the same binaries on the host's loopback; iperf3 client and server on lo),
#   - strata container (bridge network, portmap DNAT; iperf3 by name across the bridge),
#   - Podman's bridge (CNI backend; runc: crun refuses this cgroup v1 hybrid host),
#   - strata VM, one row per platform (uml, qemu with its accelerator: tcg where the host has no
#     VMX/SVM; the guest's NIC joined to the veth, docs/networking.md),
# Same image everywhere: scripts/build-netservers-image.sh (Debian's nginx, redis, iperf3).
# Usage: bench/network.sh   (root; release build; wrk redis-tools iperf3 podman: scripts/deps.sh)
#   DURATION=seconds per wrk/iperf3 run (default 5); NO_PODMAN=1 skips Podman, NO_VM=1 the VMs;
#   VM_PLATFORMS="uml qemu" (default) the VM rows.
#   ROUNDS=N (default 1): with N > 1 the strata container and Podman rows are measured N times,
#   interleaved (strata, Podman, Podman, strata, ...: both sets of servers run the whole time), and
#   each cell is the median; a last table gives strata / Podman per round (min, median, max), which
#   is what the "within 5 % of Podman" question needs on a noisy host.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/network.sh: needs root (namespaces, iptables, CNI plugins)" >&2; exit 1; }
repo=$PWD
bin="$(realpath "${STRATA_BIN:-target/release/strata}")"
[ -x "$bin" ] || { echo "build first: scripts/build-release.sh" >&2; exit 1; }
for t in wrk redis-benchmark iperf3 nginx redis-server; do
  command -v "$t" >/dev/null || { echo "bench/network.sh: $t missing (scripts/deps.sh)" >&2; exit 1; }
done
dur="${DURATION:-5}"
rounds="${ROUNDS:-1}"
work="$(mktemp -d /tmp/strata-netbench.XXXXXX)"
img="${NETSERVERS_IMAGE:-/var/tmp/strata-netservers-image}"
scripts/build-netservers-image.sh "$img"
tag=$$
net="nbench$tag"
export STRATA_NET_CONFIG_DIR="$work/net.d"
st() { "$bin" --store "$work/store" --root "$work/root" --quiet "$@"; }
podman=""
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for c in $(st ps -aq 2>/dev/null); do st rm -f "$c" >/dev/null 2>&1; done
  st network rm "$net" >/dev/null 2>&1
  st network prune >/dev/null 2>&1
  if [ -n "$podman" ]; then
    $podman rm -af -t 0 >/dev/null 2>&1
    $podman network rm -f "pb$tag" >/dev/null 2>&1
    $podman system reset -f >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_tcp() { # port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answers on 127.0.0.1:$1" >&2; return 1
}
wrk_rps() { # port -> requests/s
  wait_tcp "$1"
  wrk -t1 -c16 -d"${dur}s" "http://127.0.0.1:$1/4k.txt" | awk '/Requests\/sec/{print $2}'
}
redis_rps() { # port -> "SET GET" requests/s
  wait_tcp "$1"
  for _ in $(seq 50); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  redis-benchmark -p "$1" -q -n 100000 -c 16 -t set,get 2>/dev/null | tr '\r' '\n' |
    awk '/^SET:/{s=$2} /^GET:/{g=$2} END{print s, g}'
}
iperf_gbps() { # json on stdin -> Gbit/s received
  python3 -c 'import json,sys; v=json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]; print("%.2f" % (v / 1e9))'
}
rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 |"); }

# --- host-native -------------------------------------------------------------------------------
h_http=$(free_port); h_redis=$(free_port); h_iperf=$(free_port)
mkdir -p "$work/native/html" "$work/native/tmp"
head -c 4096 /dev/zero | tr '\0' x >"$work/native/html/4k.txt"
cat >"$work/native/nginx.conf" <<EOF
worker_processes 1;
pid $work/native/nginx.pid;
error_log stderr;
events { worker_connections 1024; }
http {
    access_log off; sendfile on; keepalive_requests 100000;
    client_body_temp_path $work/native/tmp; proxy_temp_path $work/native/tmp;
    fastcgi_temp_path $work/native/tmp; uwsgi_temp_path $work/native/tmp; scgi_temp_path $work/native/tmp;
    server { listen 127.0.0.1:$h_http; root $work/native/html; location / { } }
}
EOF
nginx -c "$work/native/nginx.conf" -g 'daemon off;' 2>/dev/null & pids+=($!)
redis-server --port "$h_redis" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & pids+=($!)
iperf3 -s -p "$h_iperf" >/dev/null 2>&1 & pids+=($!)
n_wrk=$(wrk_rps "$h_http")
read -r n_set n_get <<<"$(redis_rps "$h_redis")"
wait_tcp "$h_iperf"
n_ip=$(iperf3 -c 127.0.0.1 -p "$h_iperf" -t "$dur" -J | iperf_gbps)
row "host-native (loopback)" "$n_wrk" "$n_set" "$n_get" "$n_ip (lo)"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
pids=()

# --- strata container and Podman's bridge, interleaved ---------------------------------------------
st image load -i "$img/layout" -t netservers:latest >/dev/null
st network create --subnet "10.198.$((tag % 200 + 20)).0/24" "$net" >/dev/null
s_http=$(free_port); s_redis=$(free_port)
st run -d --name "web$tag" --network "$net" -p "127.0.0.1:$s_http:80" netservers >/dev/null
st run -d --name "kv$tag" --network "$net" -p "127.0.0.1:$s_redis:6379" --entrypoint redis-server netservers \
  --protected-mode no --save '' --appendonly no >/dev/null
st run -d --name "ip$tag" --network "$net" --entrypoint iperf3 netservers -s >/dev/null
have_podman=""
if [ -z "${NO_PODMAN:-}" ] && command -v podman >/dev/null; then
  have_podman=1
  p="$work/podman"
  # overlay, Podman's default and the kind of root filesystem strata gives a container: nginx's
  # sendfile of the test file goes through overlayfs in both (with vfs Podman's would not).
  podman="podman --root $p/root --runroot $p/runroot --tmpdir $p/tmp --network-config-dir $p/networks --storage-driver overlay --cgroup-manager cgroupfs --events-backend file"
  $podman pull -q "oci:$img/layout:latest" >/dev/null
  pimg=$($podman images -q | head -1)
  prun="$podman run --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=30000:30000"
  $podman network create --subnet "10.197.$((tag % 200 + 20)).0/24" "pb$tag" >/dev/null
  p_http=$(free_port); p_redis=$(free_port)
  $prun -d --name "pweb$tag" --network "pb$tag" -p "127.0.0.1:$p_http:80" "$pimg" >/dev/null
  $prun -d --name "pkv$tag" --network "pb$tag" -p "127.0.0.1:$p_redis:6379" --entrypoint redis-server "$pimg" \
    --protected-mode no --save '' --appendonly no >/dev/null
  $prun -d --name "pip$tag" --network "pb$tag" --entrypoint iperf3 "$pimg" -s >/dev/null
  # By address: Podman's CNI networks resolve names only with the dnsname plugin.
  pip=$($podman inspect -f "{{(index .NetworkSettings.Networks \"pb$tag\").IPAddress}}" "pip$tag")
fi
measure_strata() { # -> "wrk set get iperf"
  local w a g i
  w=$(wrk_rps "$s_http")
  read -r a g <<<"$(redis_rps "$s_redis")"
  sleep 0.5
  i=$(st run --rm --network "$net" --entrypoint iperf3 netservers -c "ip$tag" -t "$dur" -J | iperf_gbps)
  echo "$w $a $g $i"
}
measure_podman() {
  local w a g i
  w=$(wrk_rps "$p_http")
  read -r a g <<<"$(redis_rps "$p_redis")"
  sleep 0.5
  i=$($prun --rm --network "pb$tag" --entrypoint iperf3 "$pimg" -c "$pip" -t "$dur" -J | iperf_gbps)
  echo "$w $a $g $i"
}
s_runs=(); p_runs=()
for r in $(seq "$rounds"); do
  # Alternate which goes first, so a drift of the host's load favours neither.
  if [ $((r % 2)) = 1 ] || [ -z "$have_podman" ]; then
    s_runs+=("$(measure_strata)")
    [ -n "$have_podman" ] && p_runs+=("$(measure_podman)")
  else
    p_runs+=("$(measure_podman)")
    s_runs+=("$(measure_strata)")
  fi
done
median_cols() { # lines of 4 numbers on stdin -> their column medians
  python3 -c '
import sys, statistics
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
print(" ".join("%.2f" % statistics.median(c) for c in zip(*rows)))'
}
read -r s_wrk s_set s_get s_ip <<<"$(printf '%s\n' "${s_runs[@]}" | median_cols)"
row "strata container (bridge, -p)" "$s_wrk" "$s_set" "$s_get" "$s_ip"
if [ -n "$have_podman" ]; then
  read -r p_wrk p_set p_get p_ip <<<"$(printf '%s\n' "${p_runs[@]}" | median_cols)"
  prow="| podman 4.3 bridge (CNI, runc) | $p_wrk | $p_set | $p_get | $p_ip |"
fi
for c in "web$tag" "kv$tag" "ip$tag"; do st rm -f "$c" >/dev/null; done

# --- strata VM ---------------------------------------------------------------------------------------
# The same servers in VMs of each platform on the same network: the guest's NIC (UML's vector
# driver, QEMU's virtio-net) takes over the namespace's veth (tap + tc mirred, docs/networking.md).
# NO_VM=1 skips the rows; VM_PLATFORMS (default "uml qemu") picks them.
for vp in ${VM_PLATFORMS:-uml qemu}; do
  [ -z "${NO_VM:-}" ] || break
  v_http=$(free_port); v_redis=$(free_port)
  st run -d --vm --platform "$vp" --memory 512m --name "vweb$tag" --network "$net" -p "127.0.0.1:$v_http:80" netservers >/dev/null
  st run -d --vm --platform "$vp" --memory 512m --name "vkv$tag" --network "$net" -p "127.0.0.1:$v_redis:6379" \
    --entrypoint redis-server netservers --protected-mode no --save '' --appendonly no >/dev/null
  st run -d --vm --platform "$vp" --memory 256m --name "vip$tag" --network "$net" --entrypoint iperf3 netservers -s >/dev/null
  v_wrk=$(wrk_rps "$v_http")
  read -r v_set v_get <<<"$(redis_rps "$v_redis")"
  sleep 0.5
  v_ip=$(st run --rm --vm --platform "$vp" --network "$net" --entrypoint iperf3 netservers -c "vip$tag" -t "$dur" -J | iperf_gbps)
  # The platform as `strata inspect` names it: uml, or qemu with its accelerator (qemu-tcg here).
  vname=$(st inspect "vweb$tag" | python3 -c 'import json,sys; v=json.load(sys.stdin)[0]["Vm"]; a=v.get("Accelerator"); print(v["Platform"] + ("-" + a if a else ""))')
  row "strata VM ($vname, bridge, -p)" "$v_wrk" "$v_set" "$v_get" "$v_ip"
  for c in "vweb$tag" "vkv$tag" "vip$tag"; do st rm -f "$c" >/dev/null; done
done

if [ -n "$have_podman" ]; then rows+=("$prow"); fi

echo "| instance | wrk nginx 4 KiB, req/s (-p) | redis SET req/s (-p) | redis GET req/s (-p) | iperf3 instance to instance, Gbit/s |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ -n "$have_podman" ] && [ "$rounds" -gt 1 ]; then
  echo
  echo "strata container / Podman, per round ($rounds rounds, interleaved; DURATION=$dur):"
  echo
  echo "| measure | min | median | max |"
  echo "|---|---|---|---|"
  python3 - "$(printf '%s;' "${s_runs[@]}")" "$(printf '%s;' "${p_runs[@]}")" <<'PY'
import sys, statistics
s = [list(map(float, r.split())) for r in sys.argv[1].split(";") if r.strip()]
p = [list(map(float, r.split())) for r in sys.argv[2].split(";") if r.strip()]
for k, name in enumerate(["wrk nginx 4 KiB (-p)", "redis SET (-p)", "redis GET (-p)", "iperf3 instance to instance"]):
    q = [a[k] / b[k] for a, b in zip(s, p)]
    print(f"| {name} | {min(q):.3f} | {statistics.median(q):.3f} | {max(q):.3f} |")
PY
fi
