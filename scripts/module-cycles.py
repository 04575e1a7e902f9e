#!/usr/bin/env python3
"""Prints the import graph between the files of each crate under crates/ (`use crate::...`,
`use super::...`, `self::` and inline `crate::x::`/`super::x::` paths) and exits non-zero when
any files import each other in a circle.

    python3 scripts/module-cycles.py            # cycles only (exit 1 if any)
    python3 scripts/module-cycles.py --graph    # also every edge, crate by crate

A crate here is a module tree: each src/lib.rs or src/**/main.rs is a root, and the files its
`mod` declarations reach (path-style: a/b.rs or a/b/mod.rs) belong to it. A name used through a
`pub use` re-export counts as a use of the module that defines it (`crate::Error` re-exported
by lib.rs from error.rs is an edge to error.rs); the re-exporting `pub use` itself is no edge.
Edges from a file to itself (e.g. `use super::*` in its tests module) are ignored.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = os.path.join(ROOT, "crates")

MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)
USE_RE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]*);", re.S)
INLINE_RE = re.compile(r"(?<![A-Za-z0-9_:])([a-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # String literals could hold `crate::`; drop simple ones.
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (as lists of segments)."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def go(prefix, s):
        i = s.find("{")
        if i < 0:
            out.append(prefix + [p for p in s.split("::") if p])
            return
        head = [p for p in s[:i].split("::") if p]
        body = s[i + 1 : s.rindex("}")]
        depth, start, parts = 0, 0, []
        for j, ch in enumerate(body):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(body[start:j])
                start = j + 1
        parts.append(body[start:])
        for p in parts:
            if p:
                go(prefix + head, p)

    go([], tree)
    return [[seg.split(" as ")[0] for seg in p] for p in out]


def crate_trees():
    """Yields (name, {module path tuple: file})."""
    for crate in sorted(os.listdir(CRATES)):
        src = os.path.join(CRATES, crate, "src")
        if not os.path.isdir(src):
            continue
        roots = []
        for d, _, files in os.walk(src):
            for f in files:
                if f == "lib.rs" and d == src or f == "main.rs":
                    roots.append(os.path.join(d, f))
        for root in sorted(roots):
            mods = {(): root}
            stack = [((), root)]
            while stack:
                path, f = stack.pop()
                base = os.path.dirname(f)
                if not (f == root or f.endswith("mod.rs")):
                    base = os.path.join(base, os.path.basename(f)[:-3])
                for m in MOD_RE.findall(strip_comments(open(f).read())):
                    for cand in (os.path.join(base, m + ".rs"), os.path.join(base, m, "mod.rs")):
                        if os.path.exists(cand):
                            mods[path + (m,)] = cand
                            stack.append((path + (m,), cand))
                            break
            name = os.path.relpath(root, CRATES)
            yield name, mods


def resolve(mods, here, segs, reexports=None):
    """The file module a path names: the longest known module prefix, or, when the item after it
    is a `pub use` re-export of that module, the module it comes from. None for other crates."""
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base, rest = here, segs
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    elif here + (segs[0],) in mods:
        # A child module named without a prefix (`mod x;` then `x::Y`).
        base, rest = here, segs
    else:
        return None
    best, depth = (base if base in mods else None), 0
    cur = base
    for i, s in enumerate(rest):
        cur = cur + (s,)
        if cur in mods:
            best, depth = cur, i + 1
        else:
            break
    if best is not None and reexports and depth < len(rest):
        target = reexports.get(best, {}).get(rest[depth])
        if target is not None:
            return target
    return best


INLINE_MOD_RE = re.compile(r"\bmod\s+([a-z_][a-z0-9_]*)\s*\{")


def scopes(text, path):
    """Splits a file into (module path, text) pieces: inline `mod name { ... }` blocks (tests
    modules mostly) are their own scope, so `super::` inside them means the file's module."""
    out, pos = [], 0
    for m in INLINE_MOD_RE.finditer(text):
        if m.start() < pos:
            continue
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        out.append((path, text[pos : m.start()]))
        inner = text[m.end() : i]
        out.extend(scopes(inner, path + (m.group(1),)))
        pos = i + 1
    out.append((path, text[pos:]))
    return out


def reexports_of(mods):
    """For each module, the names it re-exports (`pub use a::b::Name`) and the module they
    come from, followed through chains of re-exports."""
    raw = {}
    for path, f in mods.items():
        text = strip_comments(open(f).read())
        for vis, u in USE_RE.findall(text):
            if not vis:
                continue
            for p in expand_use(u):
                if not p or p[-1] in ("*", "self"):
                    continue
                t = resolve(mods, path, p)
                if t is not None and t != path:
                    raw.setdefault(path, {})[p[-1]] = t
    changed = True
    while changed:
        changed = False
        for m, names in raw.items():
            for n, t in names.items():
                nt = raw.get(t, {}).get(n)
                if nt is not None and nt != t and nt != m:
                    names[n] = nt
                    changed = True
    return raw


def graph(mods):
    reexports = reexports_of(mods)
    edges = {}
    for path, f in mods.items():
        targets = set()
        for here, text in scopes(strip_comments(open(f).read()), path):
            paths = []
            for vis, u in USE_RE.findall(text):
                for p in expand_use(u):
                    # `pub use` at a module only re-exports: its readers get the edge instead.
                    if vis and here == path and reexports.get(path, {}).get(p[-1] if p else None):
                        continue
                    paths.append(p)
            body = USE_RE.sub("", text)
            paths.extend(p.split("::") for p in INLINE_RE.findall(body))
            for p in paths:
                t = resolve(mods, here, p, reexports)
                if t is not None and t != path:
                    targets.add(t)
        edges[path] = targets
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    show = "--graph" in sys.argv
    bad = 0
    for name, mods in crate_trees():
        edges = graph(mods)
        label = lambda m: "::".join(m) or "(root)"
        if show:
            print(f"{name}:")
            for v in sorted(edges):
                if edges[v]:
                    print(f"  {label(v)} -> {', '.join(sorted(label(t) for t in edges[v]))}")
        for comp in cycles(edges):
            bad += 1
            print(f"{name}: import circle: {' , '.join(sorted(label(m) for m in comp))}")
    if bad:
        sys.exit(1)
    print("no import circles between files in crates/")


if __name__ == "__main__":
    main()
