#!/usr/bin/env bash
# Image store costs: building the default image, loading oci-archive/docker-archive, importing a
# larger rootfs tarball (against GNU tar extracting the same file), and resolving an image (the
# `strata run` hot path), with hyperfine on fresh temp stores. Writes the "image-store" section
# of docs/benchmarks.md.
#
# usage: bench/image-store.sh        (RUNS=10 by default; needs root for ownership/devices)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/image-store.sh: needs root (file ownership, device nodes)" >&2; exit 1; }
runs=${RUNS:-10}
STRATA_BINS=strata bash scripts/build-release.sh -q
target=${CARGO_TARGET_DIR:-target}
strata=$(realpath "$target/release/strata")

work=$(mktemp -d /tmp/image-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
store=$work/store

# Fixtures: the default image as an OCI layout (umoci), oci-archive and docker-archive (skopeo),
# and a "big" rootfs tarball of /usr/lib/python3* (gzip).
"$strata" --store "$work/src" --quiet image build-default >/dev/null
layer=$("$strata" --store "$work/src" inspect busybox | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["LayerDirs"][0])')
umoci init --layout "$work/layout" && umoci new --image "$work/layout:t"
umoci insert --image "$work/layout:t" "$layer/" / >/dev/null
skopeo copy -q "oci:$work/layout:t" "oci-archive:$work/oci.tar:bench/oci:v1"
skopeo copy -q "oci:$work/layout:t" "docker-archive:$work/docker.tar:bench/docker:v1"
tar -C / -czf "$work/big.tar.gz" usr/lib/python3 usr/lib/python3.11
big_files=$(tar -tzf "$work/big.tar.gz" | wc -l)
big_mib=$(( $(stat -c %s "$work/big.tar.gz") / 1048576 ))
mkdir -p "$work/untar"

hyperfine -N --runs "$runs" --warmup 1 --export-json "$work/h.json" \
  --prepare "rm -rf $store" -n "strata image build-default" "$strata --store $store --quiet image build-default" \
  --prepare "rm -rf $store" -n "strata load -i oci-archive (gzip layer)" "$strata --store $store --quiet load -i $work/oci.tar" \
  --prepare "rm -rf $store" -n "strata load -i docker-archive" "$strata --store $store --quiet load -i $work/docker.tar" \
  --prepare "rm -rf $store" -n "strata import big.tar.gz" "$strata --store $store --quiet import $work/big.tar.gz big:1" \
  --prepare "sh -c 'rm -rf $work/untar && mkdir $work/untar'" -n "GNU tar -xzf big.tar.gz (reference)" "tar -C $work/untar -xzf $work/big.tar.gz" \
  >/dev/null
"$strata" --store "$store" --quiet image build-default >/dev/null
hyperfine -N --runs $((runs * 5)) --warmup 3 --export-json "$work/r.json" \
  -n "strata inspect busybox (resolve, warm store)" "$strata --store $store inspect busybox" >/dev/null

body=$work/section.md
python3 - "$work/h.json" "$work/r.json" "$runs" "$big_files" "$big_mib" > "$body" <<'PY'
import json, os, sys
h, r, runs, files, mib = sys.argv[1:6]
print("## Image store (bench/image-store.sh)\n")
print(f"Host: {os.cpu_count()} cores, {os.uname().release}; hyperfine, {runs} runs each on a fresh store")
print(f"(`--prepare rm -rf store`), release build. big.tar.gz: /usr/lib/python3* ({files} entries, {mib} MiB gzip).\n")
print("| command | mean (ms) | min (ms) | max (ms) |")
print("|---|---|---|---|")
for f in (h, r):
    for res in json.load(open(f))["results"]:
        print(f"| {res['command']} | {res['mean']*1000:.1f} | {res['min']*1000:.1f} | {res['max']*1000:.1f} |")
PY
cat >> "$body" <<'EOF2'

Every import verifies each blob's sha256 while writing it, fsyncs it, unpacks layers through the
fd-relative unpacker (one openat walk per entry, no symlink followed) into a staging directory,
and renames into place; the GNU tar row is the same extraction without any of that.
EOF2

doc=docs/benchmarks.md
python3 - "$doc" "image-store" "$body" <<'PY'
import os, sys
doc, name, body_file = sys.argv[1:4]
body = open(body_file).read().rstrip("\n")
start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
text = open(doc).read() if os.path.exists(doc) else "# strata benchmarks\n"
block = f"{start}\n{body}\n{end}"
if start in text and end in text:
    text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(doc + ".tmp", "w").write(text)
os.replace(doc + ".tmp", doc)
PY
cat "$body"
