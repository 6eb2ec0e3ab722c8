"""One markdown table over every policy: needle at two lengths, perplexity, memory and training cost.

Rows are policies, columns are (needle at each length, ppl) x budgets, then ``kv_bytes`` at one
budget (the newest record's), extra parameters and training seconds. Records come from several
``mpcache eval`` files (chunks merged by ``plot.merge_chunks``); a record carrying a ``source``
field (a number copied from elsewhere, e.g. the README, when its records file is gone) gets a
footnote naming the source. When several records fill a cell, the one with more samples wins, a
measured one on a tie. Cells nothing fills say "–".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpcache.eval.plot import merge_chunks

MISSING = "–"


@dataclass
class SummarySpec:
    """What the table shows. ``aliases`` maps a record's policy spec to its row label."""

    needle_lengths: tuple[int, ...] = (2000, 4000)
    ppl_length: int = 2000
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2)
    kv_budget: float = 0.1
    kv_length: int = 2000
    aliases: dict[str, str] = field(default_factory=dict)
    rows: tuple[str, ...] = ()  # row order; default: first appearance in the records


def _better(new: dict, old: dict | None) -> bool:
    """More samples wins; on a tie, measured beats sourced, then the later record."""
    if old is None or new["samples"] != old["samples"]:
        return old is None or new["samples"] > old["samples"]
    return not new.get("source") or bool(old.get("source"))


def _pick(records: list[dict], spec: SummarySpec) -> dict[tuple, list[dict]]:
    """(label, task, length, budget) -> the records for that cell, the one to show first."""
    measured = merge_chunks([r for r in records if not r.get("source")])
    cells: dict[tuple, list[dict]] = {}
    for rec in [r for r in records if r.get("source")] + measured:
        label = spec.aliases.get(rec["policy"], rec["policy"])
        found = cells.setdefault((label, rec["task"], rec["length"], rec["budget"]), [])
        rec = {**rec, "_label": label}
        if found and _better(rec, found[0]):
            found.insert(0, rec)
        else:
            found.append(rec)
    return cells


def _metric_cell(rec: dict | None, notes: list[str]) -> str:
    if rec is None:
        return MISSING
    n = rec["samples"]
    if "perplexity" in rec:
        text = f"{rec['perplexity']:.1f} ({n})"
    else:
        acc = rec["accuracy"]
        text = f"{acc:.3f} ({round(acc * n)}/{n})"
    return text + _note(rec, notes)


def _kv_cell(rec: dict, notes: list[str]) -> str:
    return f"{rec['kv_bytes'] / 1e6:.1f} MB ({rec['task']}, {rec['samples']})" + _note(rec, notes)


def _note(rec: dict, notes: list[str]) -> str:
    source = rec.get("source")
    if not source:
        return ""
    if source not in notes:
        notes.append(source)
    return f" [^{notes.index(source) + 1}]"


def summary_table(records: list[dict], spec: SummarySpec | None = None) -> str:
    """The markdown table (plus footnotes for sourced cells)."""
    spec = spec or SummarySpec()
    cells = _pick(records, spec)
    labels = list(spec.rows) or list(dict.fromkeys(r["_label"] for found in cells.values() for r in found))
    pct = [f"{100 * b:g} %" for b in spec.budgets]
    header = ["policy"]
    for length in spec.needle_lengths:
        header += [f"needle L={length} {p}" for p in pct]
    header += [f"ppl L={spec.ppl_length} {p}" for p in pct]
    header += [f"kv_bytes {100 * spec.kv_budget:g} % L={spec.kv_length}", "extra params", "training"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    notes: list[str] = []
    for label in labels:
        def get(task: str, length: int, budget: float, label: str = label) -> list[dict]:
            # a budget-less policy (full) has its records at budget 1.0: they fill every budget column
            return cells.get((label, task, length, budget)) or cells.get((label, task, length, 1.0)) or []

        row = [label]
        for length in spec.needle_lengths:
            row += [_metric_cell(next(iter(get("needle", length, b)), None), notes) for b in spec.budgets]
        row += [_metric_cell(next(iter(get("ppl", spec.ppl_length, b)), None), notes) for b in spec.budgets]
        # memory depends on the code more than on the samples: the newest measurement
        kv = sorted((r for task in ("needle", "ppl") for r in get(task, spec.kv_length, spec.kv_budget)
                     if r.get("kv_bytes")), key=lambda r: r.get("time", ""), reverse=True)
        row.append(_kv_cell(kv[0], notes) if kv else MISSING)
        mine = [r for found in cells.values() for r in found if r["_label"] == label]
        trained = [r for r in mine if r.get("extra_params")]
        if trained:
            secs = trained[0].get("train_seconds")
            row.append(f"{trained[0]['extra_params'] / 1e6:.2f} M")
            row.append(f"{secs:.0f} s" if secs is not None else MISSING)
        else:  # only the trained policies record extra parameters
            row += ["0", "none"] if mine else [MISSING, MISSING]
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines.append("")
        lines += [f"[^{i}]: {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)
