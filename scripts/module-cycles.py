#!/usr/bin/env python3
"""Fails when the top-level modules of one crate import each other in a circle.

For every crate of the workspace (a directory with Cargo.toml and src/), each
file under src/ belongs to the top-level module named by its first path
component (src/service/keys.rs and src/service.rs both belong to `service`;
lib.rs and main.rs are the crate root, which may use every module). An edge
A -> B is any `crate::B` path (in `use` or in code) written in A's files.
Edges inside one top-level module are the module's own business. We report
every strongly connected component with more than one module.

Usage: python3 scripts/module-cycles.py [CRATE_DIR ...]   (default: all)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` names several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def crates(args):
    if args:
        return [ROOT / a for a in args]
    members = []
    for toml in sorted(ROOT.glob("*/Cargo.toml")) + sorted(ROOT.glob("examples/*/Cargo.toml")):
        if (toml.parent / "src").is_dir():
            members.append(toml.parent)
    return members


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph(crate):
    src = crate / "src"
    edges = {}
    modules = set()
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src)
        top = rel.parts[0]
        if top.endswith(".rs"):
            top = top[:-3]
        if top in ("lib", "main", "bin"):
            continue
        modules.add(top)
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src)
        top = rel.parts[0][:-3] if rel.parts[0].endswith(".rs") else rel.parts[0]
        if top in ("lib", "main", "bin"):
            continue
        text = strip_comments(path.read_text())
        targets = set(CRATE_PATH.findall(text))
        for group in CRATE_GROUP.findall(text):
            for item in group.split(","):
                name = item.strip().split("::")[0].strip()
                if name:
                    targets.add(name)
        for target in targets:
            if target in modules and target != top:
                edges.setdefault(top, set()).add(target)
    return modules, edges


def cycles(modules, edges):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def main():
    failed = False
    for crate in crates(sys.argv[1:]):
        modules, edges = graph(crate)
        found = cycles(modules, edges)
        name = crate.relative_to(ROOT)
        if found:
            failed = True
            for component in found:
                inner = {m: sorted(edges.get(m, set()) & set(component)) for m in component}
                detail = "; ".join(f"{m} -> {', '.join(t)}" for m, t in inner.items())
                print(f"{name}: modules import each other in a circle: {detail}")
        else:
            print(f"{name}: {len(modules)} top-level modules, {sum(len(t) for t in edges.values())} edges, no circle")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
