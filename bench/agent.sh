#!/usr/bin/env bash
# Measures strata-agent + strata-proto on this host (no VM: the agent's --no-pid1 mode over a
# socketpair) and a UML guest boot to the agent's handshake; writes the "strata-agent" section of
# docs/benchmarks.md. Usage: bench/agent.sh  (root; user-mode-linux installed for the UML row)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --release -p strata-agent --examples
agent="$CARGO_TARGET_DIR/release/strata-agent"
rows="$("$CARGO_TARGET_DIR/release/examples/agent_bench" "$agent")"
static="$(scripts/build-agent.sh 2>/dev/null)"
size="$(stat -c %s "$static")"

section="$(cat <<MD
## strata-agent and strata-proto

Command: \`bench/agent.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)).
Host mode runs the release agent with \`--no-pid1\` over a socketpair, driven by the real host client.

| measurement | min | median |
|---|---|---|
$rows
| static agent binary size (scripts/build-agent.sh) | $((size / 1024)) KiB | |
MD
)"
doc=docs/benchmarks.md
mkdir -p docs
touch "$doc"
# Replace this script's section (from its heading to the next "## "), keep everyone else's.
python3 - "$doc" "$section" <<'PY'
import sys, re
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
pat = re.compile(r"^## strata-agent and strata-proto\n.*?(?=^## |\Z)", re.S | re.M)
text = pat.sub(section + "\n\n", text) if pat.search(text) else text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
open(path, "w").write(text)
PY
echo "$section"
