#!/usr/bin/env bash
# Builds strata-agent as a static binary (PID 1 of strata guests) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build -p strata-agent --release --target x86_64-unknown-linux-gnu >&2
bin="$(realpath "$target_dir/x86_64-unknown-linux-gnu/release/strata-agent")"
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q "statically linked"; then
  echo "build-agent.sh: $bin is dynamically linked; the guest has no libc to load" >&2
  exit 1
fi
echo "$bin"
