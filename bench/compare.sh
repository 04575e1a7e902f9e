#!/usr/bin/env bash
# Runs `strata compare` on the default busybox image (container and every VM platform this host
# has) and writes the "compare" section of docs/benchmarks.md with its table and chart
# (docs/compare.svg, drawn by the command itself). Usage: bench/compare.sh [RUNS]  (root)
# STRATA_BENCH_DOC writes the section into another file (default docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
STRATA_BINS=strata bash scripts/build-release.sh -q
bash scripts/build-agent.sh >/dev/null
strata="$CARGO_TARGET_DIR/release/strata"
work=$(mktemp -d /var/tmp/strata-bench-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
s() { "$strata" --store "$work/store" --root "$work/root" "$@"; }
s --quiet image build-default >/dev/null
s --quiet compare --runs "$runs" busybox >/dev/null # warm-up: builds the VM disk and initramfs caches
s --quiet compare --runs "$runs" --chart docs/compare.svg --json busybox >"$work/compare.json"
table=$(python3 - "$work/compare.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
mb = lambda b: f"{b / 1e6:.1f} MB"
ms3 = lambda s: f"{s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f}"
label = lambda l: l["layer"] + (f"-{l['platform']}" if l["platform"] else "")
print("| layer | size to start | per instance | start ms min/med/max | exit ms min/med/max | peak memory (median) | kernel |")
print("|---|---|---|---|---|---|---|")
for l in r["layers"]:
    print(f"| {label(l)} | {mb(l['start_bytes'])} | {l['per_instance_bytes'] // 1024} KiB | {ms3(l['start_ms'])} | {ms3(l['exit_ms'])} | {mb(l['memory_peak_bytes']['median'])} | {l['kernel']} |")
print()
print("| probe | " + " | ".join(label(l) for l in r["layers"]) + " |")
print("|---|" + "---|" * len(r["layers"]))
for p in r["layers"][0]["probes"]:
    cells = []
    for l in r["layers"]:
        q = next(x for x in l["probes"] if x["name"] == p["name"])
        d = q["detail"]
        d = d if len(d) <= 60 else "..." + d[-60:]  # the reason ends an error message
        cells.append(f"{q['result']}: {d}".replace("|", "/"))
    print(f"| {p['name']} | " + " | ".join(cells) + " |")
PY
)
body="$work/section.md"
cat >"$body" <<MD
## strata compare: container vs VM on the default busybox image (bench/compare.sh)

Command: \`strata compare --runs $runs --chart docs/compare.svg busybox\` (after one warm-up compare that
builds the VM root disk and agent initramfs caches), $(date -u +%Y-%m-%d), $(nproc) cores shared with other
work, load $(cut -d' ' -f1 /proc/loadavg), host kernel $(uname -r). CMD is \`true\`.

$table

![start time and peak memory per layer](compare.svg)

How each number is taken (\`strata compare --help\`; JSON schema \`strata.compare/v2\` below):
- *size to start*: allocated blocks of the image layers; for a VM also the guest kernel, the agent
  initramfs and the image's cached root disk. *per instance*: allocated blocks of the container's
  overlay upper dir / the VM's COW file, read after CMD exited while the instance still exists.
- *start*: from spawning \`strata run --rm -i\` until the workload's execve took effect, as the layer
  records it: the container's init reads the clock right before execve and sends it to the runtime,
  which keeps it once the channel's close-on-exec end closes (the exec took effect) as the \`started\` key
  of its state.json; for a VM the guest agent replies \`Started\` once its
  close-on-exec error pipe closes and the keeper stamps that reply on arrival with the host clock (a UML
  guest's clock is not the host's); *exit*: until the wrapper's line saying CMD exited arrives. Both
  include strata's own CLI work.
- *peak memory*: what the instance added on the host: \`memory.max_usage_in_bytes\` of the instance's
  memory cgroup — for a container its processes, for a UML VM every UML process in the jail, which
  includes the guest memory actually touched — plus the peak RSS (VmHWM) of the host processes outside
  that cgroup: the \`strata run\` monitor, and for a VM its keeper (\`memory_monitor_bytes\` in the JSON).
- *probes*: shell snippets run inside each layer; \`works\`/\`refused\` is what happened, with the message.
  \`load_module\` tries \`insmod\` of a non-module file: reaching the loader would say "invalid module
  format"; EPERM or ENOSYS (no module support in the kernel) count as refused. \`raw_socket\` is busybox
  \`ping\` of the (down) loopback: "Network is unreachable" means the socket opened, only EPERM is refused.

JSON (\`--json\`): \`{schema, image, command, runs, host_kernel, layers: [{layer ("container"|"vm"),
platform (null|"uml"|"kvm"), kernel, start_bytes, start_parts: {image_layers, guest_kernel, initramfs,
vm_disk}, per_instance_bytes, start_ms, exit_ms, memory_peak_bytes, memory_monitor_bytes: {min,
median, max, samples},
probes: [{name, result ("works"|"refused"), detail}]}]}\`; the keys are checked by
\`crates/cli/tests/compare_e2e.rs\`.
MD
doc=${STRATA_BENCH_DOC:-docs/benchmarks.md}
python3 - "$doc" "$body" <<'PY'
import os, sys
doc, body_file = sys.argv[1:3]
body = open(body_file).read().rstrip("\n")
start, end = "<!-- compare:start -->", "<!-- compare:end -->"
text = open(doc).read() if os.path.exists(doc) else "# strata benchmarks\n"
block = f"{start}\n{body}\n{end}"
if start in text and end in text:
    text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
tmp = doc + ".tmp"
open(tmp, "w").write(text)
os.replace(tmp, doc)
PY
cat "$body"
