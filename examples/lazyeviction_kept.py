"""What LazyEviction keeps on the decode-heavy task (``mpcache eval decode``): one sample, decoded
token by token under the budget, with the kept tokens' positions tracked (a subclass of the policy
that gathers a position row with the cache; the selection itself is the policy's own).

    python examples/lazyeviction_kept.py [--length 512] [--decode-tokens 1024] [--budget 0.1] \
        [--index 0] [--alpha 1e-4]

Prints, over all layers and KV heads: how often a held token counts as "important" at a step
(attention >= alpha, the max over the group's query heads), how much of each eviction is decided by
ties of the recurrence score, and where the kept tokens sit at the end (sinks, rest of the prefix,
older continuation, the newest W).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcache.core.backend import PlainBackend  # noqa: E402
from mpcache.eval import decode_heavy, runner  # noqa: E402
from mpcache.eval.tasks import build_sample  # noqa: E402
from mpcache.generation.prefill import prefill  # noqa: E402
from mpcache.models import Transformer, load_model  # noqa: E402
from mpcache.policies.lazyeviction import LazyEvictionPolicy, recurrence_score  # noqa: E402

STATS: dict[str, list[float]] = {"hit": [], "tied": [], "distinct": []}


class Tracked(LazyEvictionPolicy):
    """LazyEviction with each held token's position kept alongside (diagnostics only)."""

    def after_prefill(self, layer, prompt, cache, backend):
        cache.state["pos"] = torch.arange(cache.length).expand(cache.k.shape[0], -1).clone()
        super().after_prefill(layer, prompt, cache, backend)

    def decode_kv(self, layer, q, cache, backend):
        pos = cache.state["pos"]
        new = cache.length - pos.shape[1]
        if new > 0:
            fresh = torch.arange(cache.appended - new, cache.appended).expand(pos.shape[0], -1)
            cache.state["pos"] = torch.cat([pos, fresh], 1)
        return super().decode_kv(layer, q, cache, backend)

    def observe(self, layer, probs, cache, backend):
        if not cache.state.get("off", True):
            STATS["hit"].append(float((probs.amax(1) >= self.alpha).float().mean()))
        super().observe(layer, probs, cache, backend)

    def _evict(self, cache, backend):
        st = cache.state
        old = cache.length - st["w"]
        keep = st["capacity"] - st["w"]
        score = recurrence_score(st["t"], st["lr"][:, :old], st["mri"][:, :old])
        threshold = score.topk(keep, dim=1).values[:, -1:]
        STATS["tied"].append(float((score == threshold).float().mean()))
        STATS["distinct"].append(sum(len(torch.unique(row)) for row in score) / score.shape[0])
        sel = backend.topk(score, keep)
        pos = st["pos"]
        st["pos"] = torch.cat([backend.gather(sel, pos[:, :old, None])[..., 0], pos[:, old:]], 1)
        super()._evict(cache, backend)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=1024)
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--alpha", type=float, default=LazyEvictionPolicy.alpha, help="importance threshold")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    model = Transformer(loaded.config, loaded.weights, PlainBackend())
    sample = build_sample(decode_heavy.TASK, loaded.tokenizer, args.length, args.seed, args.index,
                          args.decode_tokens)
    budget = decode_heavy.policy_budget(args.budget, args.length, args.decode_tokens)
    policy = Tracked(budget=budget, alpha=args.alpha)
    pre = prefill(model, sample.prompt_ids, [policy])
    cache = pre.cache.start(policy, pre.prompts, model.backend)
    nll = []
    for token, nxt in zip(sample.targets[:-1], sample.targets[1:], strict=True):
        logits = model.forward([token], cache)[-1].double()
        nll.append(float(torch.logsumexp(logits, 0) - logits[nxt]))
    cap = decode_heavy.cap_tokens(args.budget, args.length, args.decode_tokens)
    w = cache.layers[0].state["w"]
    pos = torch.cat([lc.state["pos"] for lc in cache.layers])  # [layers * Hkv, held]
    end = cache.position
    share = {
        "sinks (positions 0-3)": (pos < 4).float().mean(),
        f"rest of the prefix (4-{args.length - 1})": ((pos >= 4) & (pos < args.length)).float().mean(),
        "older continuation": ((pos >= args.length) & (pos < end - w)).float().mean(),
        f"newest W = {w}": (pos >= end - w).float().mean(),
    }
    print(f"sample {args.index}: prefix {args.length}, {args.decode_tokens} decoded, cap {cap}, W {w}, "
          f"alpha {args.alpha:g}; "
          f"perplexity {runner.perplexity(nll):.3f}")
    hit = 100 * sum(STATS["hit"]) / len(STATS["hit"])
    print(f"held tokens with attention >= alpha at a step: {hit:.1f} %")
    print(f"evictions: {len(STATS['tied'])}; candidates tied with the cut-off score: "
          f"{100 * sum(STATS['tied']) / len(STATS['tied']):.1f} %; distinct scores per head: "
          f"{sum(STATS['distinct']) / len(STATS['distinct']):.1f} of ~{cap - w}+ candidates")
    print("kept at the end (all layers and KV heads): " + ", ".join(f"{k} {100 * float(v):.1f} %"
                                                                      for k, v in share.items()))
    ages = (end - pos[pos < end - w]).float()
    print(f"older kept tokens' age: median {ages.median():.0f}, mean {ages.mean():.0f} tokens")


if __name__ == "__main__":
    main()
