#!/usr/bin/env python3
"""Fails if modules of a crate import each other (directly or around a longer cycle).

Reads every `crate::a::b` and `super::b` path (in `use` lines and in code) of the crate's non-test
source, maps it to the longest module it names, and builds the module graph:
`handlers::produce` importing `crate::partition::Partition` is an edge
handlers::produce -> partition. A module using its own ancestor (a child reaching a
parent's item) or its own descendant is not an edge: parent and child are one unit.
Test code is skipped: files named `tests.rs` and everything from a `#[cfg(test)]` line
followed by `mod tests` on.

Usage: check_module_cycles.py [SRC_DIR ...]   (default: crates/gregor-broker/src)
Exit status 1 and every cycle printed if there is one.
"""

import os
import re
import sys

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
# `use crate::{a, b::c};` style groups: expanded to crate::a and crate::b::c.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    m = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*(pub(\(\w+\))?\s+)?mod tests\b", text, re.M)
    text = text if m is None else text[: m.start()]
    # Comments name paths too (doc links); they are not imports.
    return re.sub(r"//[^\n]*", "", text)


def imports(text, mod):
    for m in GROUP.finditer(text):
        for part in m.group(1).split(","):
            part = part.strip()
            if part:
                yield tuple(re.split(r"\s*::\s*", part.split(" as ")[0].strip("{} ")))
    for m in PATH.finditer(text):
        rest = tuple(m.group(2).split("::")[1:])
        # `super::x` in module a::b names a::x.
        yield rest if m.group(1) == "crate" else mod[:-1] + rest


def graph(src):
    modules = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs") and f != "tests.rs":
                path = os.path.join(dirpath, f)
                modules[module_of(src, path)] = path
    edges = {m: set() for m in modules}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            text = strip_tests(fh.read())
        for target in imports(text, mod):
            # The longest module the path names (the rest is an item inside it).
            best = None
            for n in range(len(target), 0, -1):
                if target[:n] in modules:
                    best = target[:n]
                    break
            if best is None or best == ():
                continue
            related = best[: len(mod)] == mod or mod[: len(best)] == best
            if not related:
                edges[mod].add(best)
    return edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(mod) or "crate"


def main(argv):
    srcs = argv[1:] or ["crates/gregor-broker/src"]
    failed = False
    for src in srcs:
        edges = graph(src)
        found = cycles(edges)
        for comp in found:
            failed = True
            members = set(comp)
            print(f"{src}: import cycle among {', '.join(name(m) for m in comp)}:")
            for m in comp:
                for t in sorted(edges[m] & members):
                    print(f"    {name(m)} -> {name(t)}")
        if not found:
            print(f"{src}: {len(edges)} modules, no import cycles")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
