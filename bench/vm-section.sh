# Sourced by bench/vm-*.sh: replaces one marked section of docs/benchmarks.md (creating the file
# or appending the section when missing), leaving every other section untouched.
# usage: vm_section NAME FILE_WITH_MARKDOWN
vm_section() {
  local name=$1 body=$2 doc
  doc="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docs/benchmarks.md"
  python3 - "$doc" "$name" "$body" <<'PY'
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
tmp = doc + ".tmp"
open(tmp, "w").write(text)
os.replace(tmp, doc)
PY
}
