#!/usr/bin/env bash
# Measures what one network attach costs with each candidate dataplane: the standard CNI plugins
# (bridge + host-local, portmap with one mapping, firewall) and netavark 1.4 (bridge, one port
# mapping, iptables driver). Each attach is ADD (setup) into a fresh network namespace, timed alone;
# teardown is timed too. Everything runs inside a throwaway network namespace that plays the host,
# so the machine's own bridges and iptables are never touched.
# Usage: bench/net-dataplane.sh [N]   (root; NETAVARK=path to a netavark binary, default
# /usr/lib/podman/netavark; without it only the CNI rows are measured)
set -euo pipefail
n="${1:-20}"
if [ -z "${INNER:-}" ]; then
  exec env INNER=1 unshare --net --mount --propagation private -- "$0" "$@"
fi
ip link set lo up
cni=/usr/lib/cni
netavark="${NETAVARK:-/usr/lib/podman/netavark}"
work="$(mktemp -d /tmp/strata-netbench.XXXXXX)"
mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }
trap 'umount -R /run/netns 2>/dev/null || true; rm -rf "$work"' EXIT

ms() { local d=$((($2 - $1) / 100000)); echo "$((d / 10)).$((d % 10))"; } # no process on the timed path

conf() { # $1 = plugin json, $2 = prevResult (optional); plain string work, no process on the timed path
  local c="{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",${1#\{}"
  if [ -n "${2:-}" ]; then c="${c%\}},\"prevResult\":$2}"; fi
  printf '%s' "$c"
}
bridge='{"type":"bridge","bridge":"sbench0","isGateway":true,"ipMasq":true,"hairpinMode":true,
 "ipam":{"type":"host-local","dataDir":"'"$work"'/ipam","ranges":[[{"subnet":"10.231.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}'
portmap='{"type":"portmap","snat":true,"runtimeConfig":{"portMappings":[{"hostPort":PORT,"containerPort":80,"protocol":"tcp"}]}}'
firewall='{"type":"firewall","backend":"iptables"}'

cni_run() { # cmd id netns conf
  CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="$3" CNI_IFNAME=eth0 CNI_PATH="$cni" \
    "$cni/$4" <<<"$5"
}
nv_add=(); nv_del=()
declare -a cni_add cni_del nv_add nv_del cni_bridge cni_portmap cni_firewall cni_bridge_del cni_portmap_del cni_firewall_del
for i in $(seq 1 "$n"); do
  ns="bench$i"; id="cnibench$i"
  ip netns add "$ns"
  t0=$(date +%s%N)
  r=$(cni_run ADD "$id" "/run/netns/$ns" bridge "$(conf "$bridge")")
  ta=$(date +%s%N)
  r=$(cni_run ADD "$id" "/run/netns/$ns" portmap "$(conf "${portmap/PORT/$((20000 + i))}" "$r")")
  tb=$(date +%s%N)
  r=$(cni_run ADD "$id" "/run/netns/$ns" firewall "$(conf "$firewall" "$r")")
  t1=$(date +%s%N)
  cni_bridge+=("$(ms "$t0" "$ta")"); cni_portmap+=("$(ms "$ta" "$tb")"); cni_firewall+=("$(ms "$tb" "$t1")")
  cni_run DEL "$id" "/run/netns/$ns" firewall "$(conf "$firewall" "$r")" >/dev/null
  tc=$(date +%s%N)
  cni_run DEL "$id" "/run/netns/$ns" portmap "$(conf "${portmap/PORT/$((20000 + i))}" "$r")" >/dev/null
  td=$(date +%s%N)
  cni_run DEL "$id" "/run/netns/$ns" bridge "$(conf "$bridge" "$r")" >/dev/null
  t2=$(date +%s%N)
  cni_firewall_del+=("$(ms "$t1" "$tc")"); cni_portmap_del+=("$(ms "$tc" "$td")"); cni_bridge_del+=("$(ms "$td" "$t2")")
  ip netns del "$ns"
  cni_add+=("$(ms "$t0" "$t1")"); cni_del+=("$(ms "$t1" "$t2")")
done

# What strata's own conflists run since network-wide rules replaced ipMasq and firewall
# (crates/net/src/rules.rs): bridge + host-local without ipMasq; portmap only with -p.
bridge_nomasq="${bridge/\"ipMasq\":true/\"ipMasq\":false}"
bridge_nomasq="${bridge_nomasq/sbench0/sbench1}"
bridge_nomasq="${bridge_nomasq/10.231.0.0/10.233.0.0}"
declare -a nm_add nm_del
for i in $(seq 1 "$n"); do
  ns="nmbench$i"; id="nmbench$i"
  ip netns add "$ns"
  t0=$(date +%s%N)
  r=$(cni_run ADD "$id" "/run/netns/$ns" bridge "$(conf "$bridge_nomasq")")
  t1=$(date +%s%N)
  cni_run DEL "$id" "/run/netns/$ns" bridge "$(conf "$bridge_nomasq" "$r")" >/dev/null
  t2=$(date +%s%N)
  ip netns del "$ns"
  nm_add+=("$(ms "$t0" "$t1")"); nm_del+=("$(ms "$t1" "$t2")")
done

if [ -x "$netavark" ]; then
  mkdir -p "$work/nv"
  for i in $(seq 1 "$n"); do
    ns="nvbench$i"
    ip netns add "$ns"
    cat >"$work/opts.json" <<JSON
{"container_id":"$(printf '%064d' "$i")","container_name":"c$i",
 "networks":{"benchnet":{"interface_name":"eth0","static_ips":["10.232.0.$((i + 1))"]}},
 "network_info":{"benchnet":{"name":"benchnet","id":"$(printf 'b%063d' 0)","driver":"bridge",
   "network_interface":"nvbench0","subnets":[{"subnet":"10.232.0.0/24","gateway":"10.232.0.1"}],
   "ipv6_enabled":false,"internal":false,"dns_enabled":false,"ipam_options":{"driver":"host-local"}}},
 "port_mappings":[{"host_ip":"","container_port":80,"host_port":$((21000 + i)),"range":1,"protocol":"tcp"}]}
JSON
    t0=$(date +%s%N)
    "$netavark" --config "$work/nv" -f "$work/opts.json" setup "/run/netns/$ns" >/dev/null
    t1=$(date +%s%N)
    "$netavark" --config "$work/nv" -f "$work/opts.json" teardown "/run/netns/$ns" >/dev/null
    t2=$(date +%s%N)
    ip netns del "$ns"
    nv_add+=("$(ms "$t0" "$t1")"); nv_del+=("$(ms "$t1" "$t2")")
  done
fi

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%s | %s", a[1], a[int((NR+1)/2)]}'; }
echo "| dataplane | attach (ADD/setup) min | median | detach (DEL/teardown) min | median |"
echo "|---|---|---|---|---|"
echo "| CNI plugins 1.1.1: bridge+host-local, portmap, firewall | $(stats "${cni_add[@]}") ms | $(stats "${cni_del[@]}") ms |"
echo "| - of which bridge + host-local + ipMasq | $(stats "${cni_bridge[@]}") ms | $(stats "${cni_bridge_del[@]}") ms |"
echo "| - of which portmap (one mapping) | $(stats "${cni_portmap[@]}") ms | $(stats "${cni_portmap_del[@]}") ms |"
echo "| - of which firewall | $(stats "${cni_firewall[@]}") ms | $(stats "${cni_firewall_del[@]}") ms |"
echo "| bridge + host-local without ipMasq (strata's conflists now) | $(stats "${nm_add[@]}") ms | $(stats "${nm_del[@]}") ms |"
[ "${#nv_add[@]}" -gt 0 ] 2>/dev/null && echo "| netavark 1.4 (bridge, port mapping, iptables) | $(stats "${nv_add[@]}") ms | $(stats "${nv_del[@]}") ms |"
exit 0
