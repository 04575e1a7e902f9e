#!/usr/bin/env bash
# Installs the container engines that the engine end-to-end tests (crates/cli/tests/engines_*.rs) drive:
# containerd 1.6 (+ ctr), dockerd 20.10 with Debian's docker client, podman 4.3 with conmon.
# Idempotent and quiet when everything is present. The engines are NOT started here: each test starts
# its own engine with private temp dirs and sockets. Package scripts must not start system daemons,
# so a policy-rc.d that refuses service starts is in place for the duration of the install.
set -euo pipefail
pkgs=(containerd docker.io podman conmon util-linux iptables)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "installing engines: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  own_policy=1
fi
# An if, not `[ ] && rm`: under set -e a false test as the trap's last command would make the script
# exit 1 after a successful install on a machine that already has a policy-rc.d.
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
