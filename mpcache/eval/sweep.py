"""A sweep over lengths x samples x policies x budgets, one JSON record per (length, policy, budget).

Each sample is prefilled once and decoded by every (policy, budget) from that prefill.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import mpcache
from mpcache.eval import decode_heavy, runner
from mpcache.eval.tasks import build_sample, is_correct
from mpcache.generation.prefill import prefill
from mpcache.models.transformer import Transformer
from mpcache.policies import parse_spec


@dataclass
class SweepConfig:
    task: str
    policies: list[str]  # specs: NAME[:KEY=VALUE...]
    budgets: list[float]
    lengths: list[int]
    samples: int
    seed: int = 0
    model: str = "smollm2"
    max_new_tokens: int = 32
    ppl_tokens: int = 32
    details: bool = False
    first_sample: int = 0  # sample indices first_sample .. first_sample + samples - 1 (for chunked runs)
    decode_tokens: int = decode_heavy.DECODE_TOKENS  # the decode task's continuation

    @property
    def scored_tokens(self) -> int:
        """Teacher-forced tokens per sample (ppl, decode)."""
        return self.decode_tokens if self.task == decode_heavy.TASK else self.ppl_tokens

    def policy_budget(self, budget: float, length: int) -> float:
        """The budget the policies get: the decode task's is a fraction of prefix + continuation."""
        if self.task != decode_heavy.TASK:
            return budget
        return decode_heavy.policy_budget(budget, length, self.decode_tokens)

    def runs(self) -> list[tuple[str, float]]:
        """(policy, budget) pairs; ``full`` (and any budget 1.0) runs once, at budget 1.0."""
        pairs: list[tuple[str, float]] = []
        for spec in self.policies:
            for budget in [1.0] if spec.split(":")[0] == "full" else self.budgets:
                if (spec, budget) not in pairs:
                    pairs.append((spec, budget))
        return pairs


@dataclass
class _Tally:
    correct: int = 0
    nll: list[float] = field(default_factory=list)
    new_tokens: int = 0
    attended: float = 0.0
    kv_bytes: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    max_held: int = 0
    max_step_keys: int = 0
    details: list[dict] = field(default_factory=list)


def versions() -> dict[str, str]:
    return {"mpcache": getattr(mpcache, "__version__", "0.1.0"), "torch": torch.__version__,
            "python": platform.python_version()}


def run_sweep(cfg: SweepConfig, model: Transformer, tokenizer, progress=None, on_records=None) -> list[dict]:
    """Run everything and return the records; ``on_records`` gets each length's records when done."""
    for spec in cfg.policies:
        parse_spec(spec, 0.5)  # validate every spec before any work
    pairs = cfg.runs()
    for length in cfg.lengths:  # the decode task's budgets must fit its prefix: check before any work
        for _, budget in pairs:
            cfg.policy_budget(budget, length)
    records = []
    teacher_forced = cfg.task in ("ppl", decode_heavy.TASK)
    for length in cfg.lengths:
        tallies = {pair: _Tally() for pair in pairs}
        prefill_seconds = 0.0
        for index in range(cfg.first_sample, cfg.first_sample + cfg.samples):
            sample = build_sample(cfg.task, tokenizer, length, cfg.seed, index, cfg.scored_tokens)
            n = len(sample.prompt_ids)
            fresh = [parse_spec(spec, cfg.policy_budget(b, n)) for spec, b in pairs]
            pre = prefill(model, sample.prompt_ids, fresh)
            prefill_seconds += pre.seconds
            for spec, budget in pairs:
                policy = parse_spec(spec, cfg.policy_budget(budget, n))
                if teacher_forced:
                    res = runner.teacher_forced(model, pre, policy, sample.targets)
                    ok = None
                else:
                    res = runner.greedy(model, pre, policy, cfg.max_new_tokens, tokenizer.eos_token_ids)
                    ok = is_correct(sample, tokenizer.decode(res.new_ids))
                t = tallies[(spec, budget)]
                t.correct += bool(ok)
                t.nll += res.nll
                t.new_tokens += len(res.new_ids)
                t.attended += res.mean_attended
                t.kv_bytes += res.kv_bytes
                t.seconds += res.seconds
                t.prompt_tokens += len(sample.prompt_ids)
                t.max_held = max(t.max_held, res.max_held)
                t.max_step_keys = max(t.max_step_keys, res.max_step_keys)
                if cfg.details:
                    detail = {"index": index, **sample.info, "prompt_tokens": len(sample.prompt_ids),
                              "new_tokens": len(res.new_ids), "attended_tokens": round(res.mean_attended, 2),
                              "kv_bytes": res.kv_bytes}
                    if ok is None:
                        detail["perplexity"] = round(runner.perplexity(res.nll), 4)
                    if cfg.task == decode_heavy.TASK:
                        detail["max_held_tokens"] = res.max_held
                    else:
                        detail.update(correct=ok, output=tokenizer.decode(res.new_ids))
                    t.details.append(detail)
                if progress is not None:
                    progress.update(1)
            del pre
        batch = [_record(cfg, spec, b, length, t, prefill_seconds, model.config)
                 for (spec, b), t in tallies.items()]
        if on_records is not None:
            on_records(batch)
        records += batch
    return records


def _record(cfg: SweepConfig, spec: str, budget: float, length: int, t: _Tally, prefill_s: float,
            config=None) -> dict:
    n = cfg.samples
    policy = parse_spec(spec, cfg.policy_budget(budget, length))
    rec = {
        "task": cfg.task, "policy": spec, "budget": budget, "length": length, "samples": n,
        "seed": cfg.seed, "model": cfg.model, "first_sample": cfg.first_sample,
    }
    if cfg.task in ("ppl", decode_heavy.TASK):
        rec["perplexity"] = round(runner.perplexity(t.nll), 4)
    else:
        rec["accuracy"] = round(t.correct / n, 4)
    rec.update({
        "mean_new_tokens": round(t.new_tokens / n, 3),
        "mean_attended_tokens": round(t.attended / n, 2),
        "mean_prompt_tokens": round(t.prompt_tokens / n, 1),
        "kv_bytes": round(t.kv_bytes / n),
        "seconds": round(t.seconds, 2),  # this policy's decodes (incl. its after_prefill hooks)
        "prefill_seconds": round(prefill_s, 2),  # shared by every policy of the sweep
        "options": {k: v for k, v in vars(policy).items() if not k.startswith("_")},
        "max_new_tokens": cfg.scored_tokens if cfg.task in ("ppl", decode_heavy.TASK) else cfg.max_new_tokens,
        "versions": versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    if cfg.task == decode_heavy.TASK:
        rec.update(decode_heavy.record_fields(budget, length, cfg.decode_tokens, t.max_held, t.max_step_keys))
    if config is not None:
        rec.update(policy.record_extras(config))
    if cfg.details:
        rec["details"] = t.details
    return rec


def write_records(path: str, records: list[dict]) -> None:
    out = Path(path)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
