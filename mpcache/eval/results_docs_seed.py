"""The seed systems' document (LazyEviction, Locret, Attention-Gate) from their own records: the
converged training runs (one record per step), the evaluations with those weights (needle, ppl,
the decode-heavy task; chunked runs merged) and, for LazyEviction (nothing to train), its rows of
the plaintext accuracy records. A records file not there yet leaves its section saying so."""

from __future__ import annotations

import math
from pathlib import Path

from mpcache.eval.plot import merge_chunks
from mpcache.eval.results_docs_common import (
    BUDGETS,
    MISSING,
    header,
    image,
    load,
    markdown,
    needle_cell,
    pct,
    pivot,
    ppl_cell,
    section,
    select,
)

TRAINING = {"locret": "seed_training_locret.jsonl", "attention-gate": "seed_training_attention-gate.jsonl"}
NEEDLE = {2000: "seed_needle_L2000.jsonl", 4000: "seed_needle_L4000.jsonl"}
FAITHFUL = "seed_needle_L2000_faithful.jsonl"
PPL = "seed_ppl_L2000.jsonl"
DECODE = "seed_decode.jsonl"
ACC = "plaintext_accuracy.jsonl"
SOURCES = (*TRAINING.values(), *NEEDLE.values(), FAITHFUL, PPL, DECODE, ACC)
SEEDS = "streaming,locret,locret:sinks=4,attention-gate"
TAIL = 25  # training loss: mean of the last TAIL steps
CMD = "OMP_NUM_THREADS=1 nice -n 15 mpcache"
TRAIN_COMMANDS = [
    f"{CMD} train locret --seed 0 --steps 4000 --max-minutes 30 "
    "--records docs/records/seed_training_locret.jsonl",
    f"{CMD} train attention-gate --seed 0 --steps 3000 --max-minutes 30 "
    "--records docs/records/seed_training_attention-gate.jsonl",
    "python examples/training_cost.py --out docs/seed_training.png",
]
NEEDLE_COMMAND = (f"{CMD} eval needle --policy {SEEDS} --budget 0.2,0.1 --length {{length}} --samples 5 "
                  "--first-sample $FIRST --seed 0 --max-new-tokens 24 --details --json "
                  "docs/records/{file}   # FIRST = 0, 5, ..., in chunks")
FAITHFUL_COMMAND = (f"{CMD} eval needle --policy locret:faithful=true,locret:faithful=true:sinks=4 "
                    "--budget 0.2 --length 2000 --samples 5 --first-sample 0 --seed 0 --max-new-tokens 24 "
                    f"--details --json docs/records/{FAITHFUL}")
PPL_COMMAND = (f"{CMD} eval ppl --policy full,{SEEDS} --budget 0.1 --length 2000 --samples 5 "
               f"--first-sample $FIRST --seed 0 --ppl-tokens 32 --details --json docs/records/{PPL}"
               "   # FIRST = 0, 5")
DECODE_COMMAND = (f"{CMD} eval decode --policy {{policies}} --budget {{budgets}} --length {{length}} "
                  "--decode-tokens {decode} --samples {samples} --first-sample {first} --seed 0 --details "
                  f"--json docs/records/{DECODE}")
SETUP = ("SmolLM2-135M-Instruct, plaintext, seed 0 (every policy sees the same samples), one thread on a "
         "shared 2-core CPU. Locret and Attention-Gate run with the converged weights below (every record "
         "carries their provenance: corpus, steps, stop reason, losses, seed). StreamingLLM is re-run in "
         "the same sweeps as the baseline. `locret:sinks=4` keeps the first 4 tokens (ours, not Locret's). "
         "The three run in plaintext only. Recipes: [reference.md](../reference.md).")


def _maybe(records: Path, name: str) -> list[dict]:
    return load(records, name) if (records / name).is_file() else []


def _eval(records: Path, name: str) -> list[dict]:
    """A sweep's records, its chunks merged (one record per task, policy, budget, length)."""
    return merge_chunks(_maybe(records, name))


def _provenance(evals: list[dict], policy: str) -> dict:
    return next((r for r in evals if r["policy"] == policy and r.get("provenance")), {})


def training_rows(records: Path, evals: list[dict]) -> list[list[str]]:
    """One row per trained policy, from its per-step records and the provenance of its evaluations."""
    rows = []
    for policy, name in TRAINING.items():
        steps = _maybe(records, name)
        if not steps:
            continue
        vals = [(r["step"], r["val"]) for r in steps if "val" in r]
        (_, first), (best_step, best) = vals[0], min(vals, key=lambda sv: sv[1]["loss"])
        train = [r["train_loss"] for r in steps if "train_loss" in r][-TAIL:]
        rec = _provenance(evals, policy)
        prov = rec.get("provenance", {})
        metric = ("top10_overlap" if "top10_overlap" in first else "attn_rel_err")
        detail = f"{metric} {first[metric]:g} -> {best[metric]:g}"
        if "natural_eviction_rate" in first:
            detail += f", natural eviction rate {first['natural_eviction_rate']:g} -> " \
                      f"{best['natural_eviction_rate']:g}"
        rows.append([policy, f"{rec['extra_params'] / 1e6:.2f} M" if rec else MISSING,
                     f"{steps[-1]['step']} ({prov.get('stop', MISSING)})", f"{steps[-1]['seconds']:,.0f} s",
                     f"{sum(train) / len(train):.4g}", f"{first['loss']:.4g} -> {best['loss']:.4g} (step "
                     f"{best_step})", _flat(vals), detail])
    return rows


def _flat(vals: list[tuple[int, dict]]) -> str:
    """How much the best held-out loss moved over the last three evaluations (convergence)."""
    if len(vals) < 4:
        return MISSING
    before = min(v["loss"] for _, v in vals[:-3])
    after = min(v["loss"] for _, v in vals)
    return f"{100 * (before - after) / before:.1f} % (from step {vals[-4][0]})"


def _corpus(evals: list[dict]) -> str:
    prov = next((r["provenance"] for r in evals if r.get("provenance", {}).get("corpus")), None)
    if prov is None:
        return ""
    c = prov["corpus"]
    tokens = c.get("tokens", {})
    return (f"Corpus: `{c.get('name')}` from the package `{c.get('package')}` (read at run time), "
            f"{tokens.get('train', 0):,} training and {tokens.get('val', 0):,} held-out tokens, windows of "
            f"{c.get('seq_len')} tokens ({c.get('train_sequences')} training and {c.get('val_sequences')} "
            "held-out windows' features cached).")


def _decode_cell(full: dict | None, n: int):
    """``n``: the section's sample count; a row with fewer says how many (vs full on the same ones)."""
    def cell(r: dict) -> str:
        text = f"{r['perplexity']:g}"
        if full is not None and r["budget"] < 1.0:
            ref = full["perplexity"]
            if r["samples"] < n:  # full's perplexity on the same samples
                mine = {d["index"] for d in r.get("details", [])}
                nll = [math.log(d["perplexity"]) for d in full.get("details", []) if d["index"] in mine]
                ref = math.exp(sum(nll) / len(nll)) if nll else ref
                text += f" [{r['samples']} sample{'s' if r['samples'] > 1 else ''}]"
            text += f" ({100 * (r['perplexity'] / ref - 1):+.1f} %)"
        text += f" / {r['mean_attended_tokens']:g} / {r['max_step_keys']}"
        if "cap_tokens" in r:
            text += f" / {r['cap_tokens']}" + ("" if r.get("capped") else " **over the cap**")
        return f"{text} / {r['kv_bytes'] / 1e6:.1f} MB"
    return cell


def _per_sample(recs: list[dict]) -> list[str]:
    """Perplexity per sample (from the records' details): is a ranking the same on every sample?"""
    indices = sorted({d["index"] for r in recs for d in r.get("details", [])})
    if not indices:
        return []
    rows = []
    for r in recs:
        ppl = {d["index"]: d["perplexity"] for d in r.get("details", [])}
        rows.append([r["policy"], pct(r["budget"]), *(f"{ppl[i]:g}" if i in ppl else MISSING
                                                      for i in indices)])
    head = ["policy", "budget", *(f"sample {i}" for i in indices)]
    return ["Perplexity per sample:", "", *markdown(head, rows)]


def _decode(records: Path) -> list[str]:
    recs = _eval(records, DECODE)
    title = "Decode-heavy task: perplexity of a long continuation decoded under the budget"
    if not recs:
        return [f"## {title}", "", f"Not measured yet (`docs/records/{DECODE}`).", ""]
    out = [f"## {title}", "",
           "LazyEviction's setting: the policy evicts while it decodes. A prefix of L essay tokens is "
           "prefilled, then the next D tokens are fed one at a time through the decode path (teacher "
           "forcing: every policy is scored on the same text) and their perplexity is reported. The budget "
           "is a fraction of the WHOLE sequence (L + D): the cap, in tokens per layer and KV head, holds "
           "from the end of prefill to the last step. Cell: perplexity (vs full) / mean keys attended per "
           "layer per step / most keys a layer attended in one step / the cap / `kv_bytes` at the end. "
           "Each record also has the most tokens a layer held after any step (`max_held_tokens`); a run "
           "that held or attended more than the cap is marked **over the cap**. LazyEviction's cache "
           "oscillates between cap - W and the cap (it evicts every W steps), so it attends fewer keys "
           "on average. Attention-Gate's own K'/V' of every token is outside the cap and inside "
           "`kv_bytes`.", ""]
    for (length, decode) in dict.fromkeys((r["length"], r["decode_tokens"]) for r in recs):
        mine = [r for r in recs if r["length"] == length and r["decode_tokens"] == decode]
        full = next((r for r in mine if r["policy"] == "full"), None)
        n = max(r["samples"] for r in mine)
        out += [f"### L = {length}, D = {decode}, {n} sample{'s' if n > 1 else ''}", ""]
        out += _pivot(mine, _decode_cell(full, n))
        out += _per_sample(mine)
        chunks = sorted({(r.get("first_sample", 0), r["samples"]) for r in _maybe(records, DECODE)
                         if r["length"] == length and r["decode_tokens"] == decode})
        budgets = ",".join(f"{b:g}" for b in sorted({r["budget"] for r in mine if r["budget"] < 1.0}))
        policies = ",".join(dict.fromkeys(r["policy"] for r in mine))
        command = DECODE_COMMAND.format(policies=policies, budgets=budgets, length=length, decode=decode,
                                        samples="$N", first="$FIRST")
        runs = ", ".join(f"{first}/{count}" for first, count in chunks)
        out += ["```", f"{command}   # FIRST/N: {runs}", "```", ""]
    return out


def _pivot(recs: list[dict], cell) -> list[str]:
    """Policies x the budgets measured (plus 100 % for the full cache)."""
    return pivot(recs, cell, tuple(sorted({r["budget"] for r in recs if r["budget"] < 1.0}))) if recs else []


def _needle_table(recs: list[dict]) -> list[str]:
    return _pivot(recs, lambda r: needle_cell(r, kv=True))


def _evals(records: Path) -> list[str]:
    """Needle at both lengths, Locret's faithful schedule, perplexity."""
    out: list[str] = []
    for length, name in NEEDLE.items():
        recs = _eval(records, name)
        n = max((r["samples"] for r in recs), default=0)
        text = ("Cell: accuracy (solved / samples) / keys per layer per step / `kv_bytes` at the end." if recs
                else f"Not measured yet with the converged weights (`docs/records/{name}`).")
        title = f"Needle, L = {length}" + (f", {n} samples" if recs else "")
        out += section(title, text, recs, _needle_table)
        if recs:
            out += ["```", NEEDLE_COMMAND.format(length=length, file=name), "```", ""]
    out += section("Needle, L = 2000, Locret's own chunked schedule",
                   "`faithful=true`: each prefill chunk is forwarded against the retained cache only "
                   "(the default replays the schedule on the full prefill's activations).",
                   _eval(records, FAITHFUL), _needle_table)
    out += ["```", FAITHFUL_COMMAND, "```", ""]
    ppl = _eval(records, PPL)
    n = max((r["samples"] for r in ppl), default=0)
    out += section(f"Perplexity, L = 2000, {n} samples",
                   ["Cell: perplexity / keys per step / `kv_bytes`; 32 teacher-forced tokens.",
                    "Locret's label puts the first token (the attention sink) near the top only in the deep "
                    "layers (in the first held-out window token 0 ranks 1,496 / 532 / 119 of 1,536 in layers "
                    "0-2), so its heads do not keep it everywhere; `locret:sinks=4` forces it."],
                   ppl, lambda rs: _pivot(rs, lambda r: ppl_cell(r, kv=True)))
    return out + ["```", PPL_COMMAND, "```", ""]


def seed_policies(records: Path) -> str:
    evals = [r for name in (NEEDLE[2000], PPL, FAITHFUL) for r in _eval(records, name)]
    out = header("Seed systems: LazyEviction, Locret, Attention-Gate (plaintext)",
                 [s for s in SOURCES if (records / s).is_file()], transcribed=False)
    out += [SETUP, ""]
    out += ["## Training to convergence", "", _corpus(evals), "",
            "Both trainers ran together, each capped at 30 minutes of training time. Steps: the last step "
            "(stop reason); the kept weights are those of the best held-out evaluation. Training loss: "
            f"the mean of the last {TAIL} steps. Last gain: how much the best held-out loss fell over "
            "the last three evaluations. Held-out metric: Locret's top-10 % overlap with its label (chance "
            "0.10); Attention-Gate's (AG-local) attention-output error and the eviction rate of its "
            "threshold (target 0.9).", ""]
    head = ["policy", "extra parameters", "steps (stop)", "training time", "training loss",
            "held-out loss (best step)", "last gain", "held-out metric"]
    out += markdown(head, training_rows(records, evals))
    out += ["```", *TRAIN_COMMANDS, "```", ""]
    out += image("seed_training.png", "training and held-out loss of the seed systems")
    out += _evals(records)
    out += _decode(records)
    acc = load(records, ACC)
    out += section("LazyEviction on needle and perplexity (nothing to train)",
                   f"Its rows of the plaintext accuracy records (`docs/records/{ACC}`, "
                   "[accuracy.md](accuracy.md)): the adapted mode (the last 32 prompt queries replayed as "
                   "steps, one eviction at the end of prefill). Cell: accuracy or perplexity / keys per "
                   "step / `kv_bytes`.", select(acc, policy="lazyeviction"), _acc_rows)
    first = [r for r in acc if r["policy"] in ("locret", "locret:sinks=4", "attention-gate")]
    out += section("Before: the first weights",
                   "The same harness with the first weights (Locret 16 steps of 256 tokens, Attention-Gate "
                   "8 steps of 128 tokens, on ~110k tokens of other text), from the plaintext accuracy "
                   "records.", first, _acc_rows)
    out += image("needle_L2000_seeds.png", "needle, L = 2000, the seed policies with the first weights")
    return "\n".join(out)


def _acc_rows(recs: list[dict]) -> list[str]:
    """task / L / samples x budgets (5, 10, 20 %) per policy."""
    rows = []
    for key in dict.fromkeys((r["policy"], r["task"], r["length"], r["samples"]) for r in recs):
        mine = {r["budget"]: r for r in recs if (r["policy"], r["task"], r["length"], r["samples"]) == key}
        cells = [(needle_cell(r, kv=True) if "accuracy" in r else ppl_cell(r, kv=True)) if (r := mine.get(b))
                 else MISSING for b in BUDGETS]
        rows.append([key[0], key[1], str(key[2]), str(key[3]), *cells])
    return markdown(["policy", "task", "L", "samples", *(pct(b) for b in BUDGETS)], rows)
