"""The needle sections of docs/results/mpc_tradeoff.md: the default against the needle bar beside the
other policies, and every needle record (``scores``: ``mpc_tradeoff.needle_scores``, chunks merged).

The bar (plaintext with the MPC approximations): L = 2000 >= 0.93 at 10 % and >= every other policy
at 5/10/20 %; L = 4000 >= 0.85 at 10 %. The other policies' 30-sample records use exact numerics
(same samples, same seed); they are compared as they are, each cell naming its numerics.
"""

from __future__ import annotations

# The default (preset ``half``) is ``lean`` with ``r1_min=0.5``: its records carry that name, because a
# bare ``mpcache`` in the older records means the default before it (``retrieval``).
DEFAULT = "mpcache:preset=lean:r1_min=0.5"
CELLS = ((2000, 0.05), (2000, 0.1), (2000, 0.2), (4000, 0.05), (4000, 0.1), (4000, 0.2))
LIMITS = {(2000, 0.1): 0.93, (4000, 0.1): 0.85}
AGAINST_OTHERS = (2000,)  # lengths where the default must also reach every other policy
ACCURACY_STEM = "plaintext_accuracy"  # the plaintext accuracy document's records: the other policies


def _record(scores: dict, policy: str, length: int, budget: float, approx: str) -> dict | None:
    # full attends the whole prompt whatever the column's budget (its records say budget 1.0)
    return scores.get((policy, 1.0 if policy == "full" else budget, length, approx))


def _cell(r: dict | None) -> str:
    return f"{r['accuracy']:.3f} ({r['samples']})" if r else "-"


def _verdicts(scores: dict, rivals: list[str]) -> list[str]:
    """Per column: does the default reach its limit and (at AGAINST_OTHERS lengths) the best rival?"""
    out = []
    for n, b in CELLS:
        mine = _record(scores, DEFAULT, n, b, "fast")
        found = [r for p in rivals if (r := _record(scores, p, n, b, "exact")) is not None]
        best = max(found, key=lambda r: r["accuracy"], default=None) if n in AGAINST_OTHERS else None
        if (n, b) not in LIMITS and n not in AGAINST_OTHERS:
            out.append("no bar")
        elif mine is None:
            out.append("not measured")
        else:
            ok = mine["accuracy"] >= LIMITS.get((n, b), 0.0)
            ok = ok and (best is None or mine["accuracy"] >= best["accuracy"])
            out.append(("met" if ok else "NOT met")
                       + (f" (best: `{best['policy']}` {best['accuracy']:.3f})" if best else ""))
    return out


def bar_table(files: dict[str, list[dict]], scores: dict) -> list[str]:
    """One row per (policy, numerics), one column per (L, budget); two last rows say, per column,
    whether the default reaches its limit and (at L = 2000) every other policy, full excluded: the
    other policies, then the earlier MPCache configurations."""
    others = list(dict.fromkeys(r["policy"] for r in files.get(ACCURACY_STEM, [])
                                if r.get("table") == "needle" and r["policy"] != "full"))
    rows = [(DEFAULT, "fast"), ("full", "fast"), ("full", "exact")] + [(p, "exact") for p in others]
    head = " | ".join(f"L={n} {b:.0%}" + (f" (>= {LIMITS[n, b]})" if (n, b) in LIMITS else "")
                      for n, b in CELLS)
    lines = [f"| policy | numerics | {head} |", "|---|---|" + "---|" * len(CELLS)]
    for policy, approx in rows:
        cells = [_cell(_record(scores, policy, n, b, approx)) for n, b in CELLS]
        if any(c != "-" for c in cells):
            lines.append(f"| `{policy}` | {approx} | " + " | ".join(cells) + " |")
    policies = [p for p in others if not p.startswith("mpcache")]
    earlier = [p for p in others if p.startswith("mpcache")]
    lines.append("| the bar, against the other policies | | "
                 + " | ".join(_verdicts(scores, policies)) + " |")
    lines.append("| ... against the earlier MPCache configurations | | "
                 + " | ".join(_verdicts(scores, earlier)) + " |")
    return lines


def needle_table(scores: dict) -> list[str]:
    lines = ["| policy | budget | L | numerics | samples | needle accuracy | kept cache (kv_bytes, MB) |",
             "|---|---|---|---|---|---|---|"]
    for (policy, budget, length, approx), r in sorted(scores.items()):
        kv = f"{r['kv_bytes'] / 1e6:.1f}" if "kv_bytes" in r else "-"
        lines.append(f"| `{policy}` | {budget:g} | {length} | {approx} | {r['samples']} "
                     f"| {r['accuracy']:.3f} | {kv} |")
    return lines
