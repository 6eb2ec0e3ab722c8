"""The package's layering, read from the code's own imports (``ast``, nothing is imported):

- every folder is one floor (``FLOORS``, bottom first) and imports only from its own floor or below;
- no import cycle between modules;
- no import inside a function, except of optional heavy dependencies in the one documented place
  per dependency (``LAZY_PLACES``);
- no module over ``MAX_LINES`` lines.

Run alone: ``python -m pytest tests/test_layout.py -q`` (it prints the offending edges).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "mpcache", "protocols")
MAX_LINES = 400

# Bottom first. A module belongs to the longest folder prefix listed here.
FLOORS = [
    "kernels",  # GPU kernels and their PyTorch references (no project imports)
    "mpcache",  # package root: the version only
    "mpcache.core",  # backend interface, approximations, cache, policy interface, errors
    "mpcache.models",  # the transformer and model loading
    "mpcache.generation",  # prefill, decode loop, chat conversation (plaintext)
    "mpcache.learned",  # trained scorers (Locret heads, Attention-Gate) and their training
    "mpcache.policies",  # the KV-cache policies and their registry
    "mpcache.eval",  # tasks, sweeps, summaries, figures
    "protocols.ring",  # shares, dealer material, truncation, keyed randomness
    "protocols",  # the MPC layer's package init (installs CrypTen's torch stand-in)
    "protocols.net",  # processes, links, launch, the TTP dealer's service
    "protocols.numerics",  # comparisons, tables, nonlinear functions on shares
    "protocols.mpc",  # the MPC backend and session
    "mpcache.programs.parties",  # programs each party runs (benches, chat)
    "mpcache.programs.commands",  # the CLI's subcommands
    "mpcache.programs",  # the CLI
    "mpcache.__main__",  # python -m mpcache
]

# The one place per optional heavy dependency that may import it inside a function.
LAZY_PLACES = {
    "mpcache.core.optional": ("matplotlib", "transformers"),
    "kernels.dispatch": ("triton", "kernels."),  # Triton kernels compile on first import
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            is_pkg = MODULES[module].name == "__init__.py"
            parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
            base = ".".join([*parts, base] if base else parts)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        stack: list[tuple[ast.AST, bool]] = [(tree, False)]
        while stack:
            node, in_function = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    named = child.module if isinstance(child, ast.ImportFrom) else child.names[0].name
                    if in_function:
                        lazy.append((module, child.lineno, named or "."))
                    edges[module].update(t for t in _target(module, child) if t != module)
                func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                stack.append((child, in_function or func))
    return edges, lazy


def floor_of(module: str) -> int:
    best = max((f for f in FLOORS if module == f or module.startswith(f + ".")), key=len)
    if best in ("mpcache", "protocols") and module != best:
        raise AssertionError(f"{module} lies in no floor: add its folder to FLOORS")
    return FLOORS.index(best)


def test_every_module_has_a_floor():
    for module in MODULES:
        floor_of(module)


def test_imports_only_go_down():
    edges, _ = _imports()
    upward = [f"{m} ({FLOORS[floor_of(m)]}) -> {t} ({FLOORS[floor_of(t)]})"
              for m, targets in edges.items() for t in targets if floor_of(t) > floor_of(m)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    edges, _ = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_inside_functions_only_at_the_lazy_places():
    _, lazy = _imports()
    bad = [f"{m}:{line} imports {name}" for m, line, name in lazy
           if not any(name.startswith(p) for p in LAZY_PLACES.get(m, ()))]
    assert not bad, "imports inside functions:\n" + "\n".join(bad)


def test_the_layout_sees_the_known_edges():
    """The walker itself: it finds imports we know exist (so an empty result means something)."""
    edges, lazy = _imports()
    assert "mpcache.core.backend" in edges["protocols.mpc.backend"]
    assert "protocols.ring.shares" in edges["protocols.numerics.nonlinear"]
    assert any(m == "kernels.dispatch" for m, _, _ in lazy)


def test_modules_stay_small():
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    big = [f"{m}: {n} lines" for m, n in sizes.items() if n > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines:\n" + "\n".join(big)
