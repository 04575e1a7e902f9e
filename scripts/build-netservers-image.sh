#!/usr/bin/env bash
# Builds the `netservers` test image from the host's Debian packages, offline: nginx (nginx-light),
# redis-server and redis-cli (redis-server, redis-tools), iperf3 with exactly the shared libraries they
# load, busybox-static for a shell, a small nginx.conf, /etc/passwd and /etc/group. The image
# config EXPOSEs 80/tcp and 6379/tcp and runs nginx by default. Output: an OCI layout at
# OUT/layout (tag `latest`), which `strata image load` takes; OUT/key names the package versions
# it was built from, so a caller can reuse OUT while they match (tests and bench/network.sh do).
# Usage: scripts/build-netservers-image.sh OUT   (root; nginx-light redis-server redis-tools
#        iperf3 busybox-static umoci: scripts/deps.sh)
set -euo pipefail
out=${1:?usage: scripts/build-netservers-image.sh OUT}
for b in /usr/sbin/nginx /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/iperf3 /bin/busybox umoci; do
  command -v "$b" >/dev/null || {
    echo "build-netservers-image.sh: $b is missing (scripts/deps.sh installs nginx-light redis-server redis-tools busybox-static umoci)" >&2
    exit 1
  }
done
key="$(dpkg-query -W -f='${Package}=${Version} ' nginx redis-server redis-tools iperf3 busybox-static 2>/dev/null)v3"
if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] && [ -d "$out/layout" ]; then
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
r="$tmp/rootfs"
mkdir -p "$r"/{bin,etc/nginx,tmp,var/lib/nginx,var/log/nginx,run,data,usr/share/nginx/html}
chmod 1777 "$r/tmp"
cp /bin/busybox "$r/bin/"
for a in sh ls cat echo sleep wget ip ping nc true env; do ln -s busybox "$r/bin/$a"; done
install -D /usr/sbin/nginx "$r/usr/sbin/nginx"
install -D "$(readlink -f /usr/bin/redis-server)" "$r/usr/bin/redis-server"
install -D /usr/bin/redis-cli "$r/usr/bin/redis-cli"
install -D /usr/bin/iperf3 "$r/usr/bin/iperf3"
# The libraries the binaries load, at the paths the loader finds them, and the loader itself.
for lib in $(ldd /usr/sbin/nginx /usr/bin/redis-server /usr/bin/redis-cli /usr/bin/iperf3 | awk '$3 ~ /^\// {print $3} $1 ~ /^\/.*[^:]$/ {print $1}' | sort -u); do
  install -D "$(readlink -f "$lib")" "$r$lib"
done
cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$r/etc/group" <<'EOF'
root:x:0:
www-data:x:33:
nogroup:x:65534:
EOF
cat >"$r/etc/nginx/nginx.conf" <<'EOF'
user www-data;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    server {
        listen 80 default_server;
        root /usr/share/nginx/html;
        location / { }
    }
}
EOF
echo "served by nginx from Debian" >"$r/usr/share/nginx/html/index.html"
head -c 4096 /dev/zero | tr '\0' x >"$r/usr/share/nginx/html/4k.txt"

l="$tmp/layout"
umoci init --layout "$l"
umoci new --image "$l:latest"
umoci insert --image "$l:latest" "$r" /
umoci config --image "$l:latest" \
  --config.exposedports 80/tcp --config.exposedports 6379/tcp \
  --config.entrypoint /usr/sbin/nginx --config.cmd -g --config.cmd 'daemon off;' \
  --config.env PATH=/usr/sbin:/usr/bin:/bin
umoci gc --layout "$l"
mv "$l" "$out/layout"
echo "$key" >"$out/key"
