#!/usr/bin/env bash
# Installs the Debian packages strata and its tests need (idempotent, quiet when all are present).
set -euo pipefail
pkgs=(busybox-static e2fsprogs erofs-utils iproute2 skopeo umoci runc crun hyperfine user-mode-linux
      linux-source-6.1 bc flex bison patch libelf-dev libssl-dev docker-registry qemu-system-x86
      linux-image-amd64
      apache2-utils strace containernetworking-plugins iptables
      wrk redis-server redis-tools nginx-light iperf3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
