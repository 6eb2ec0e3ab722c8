"""A small resumable training loop shared by the trained scorers: AdamW, warmup + linear decay,
clip by value, a progress bar, a checkpoint every few steps (resumed when found) and the final
weights saved with their metadata (training seconds accumulated across resumes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mpcache.learned import store


@dataclass
class LoopConfig:
    steps: int
    lr: float
    warmup: float = 0.1  # fraction of steps
    clip: float = 0.5  # gradient clip by value
    betas: tuple[float, float] = (0.9, 0.95)
    checkpoint_every: int = 10


def _schedule(cfg: LoopConfig) -> Callable[[int], float]:
    warm = max(1, round(cfg.warmup * cfg.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    return factor


def train(kind: str, path: Path, module: torch.nn.Module, cfg: LoopConfig,
          step_fn: Callable[[int], torch.Tensor], meta: dict, progress: bool = True) -> dict:
    """Run ``cfg.steps`` steps of ``step_fn(step) -> loss`` on ``module``'s parameters; save to ``path``."""
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    ckpt = path.with_suffix(".ckpt")
    start, elapsed, losses = 0, 0.0, []
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved["meta"] == meta:
            module.load_state_dict(saved["module"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            start, elapsed, losses = saved["step"], saved["elapsed"], saved["losses"]
            print(f"{kind}: resuming from step {start} ({ckpt})", file=sys.stderr)

    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {kind}", unit="step", disable=not progress,
               file=sys.stderr)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), cfg.clip)
        opt.step()
        sched.step()
        elapsed += time.perf_counter() - t0
        losses.append(round(float(loss.detach()), 5))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step + 1, "elapsed": elapsed, "losses": losses, "meta": meta}, ckpt)
    bar.close()
    return {"train_seconds": round(elapsed, 1), "losses": losses, "loop": asdict(cfg)}


def finish(path: Path, module: torch.nn.Module, meta: dict) -> None:
    store.save(path, {k: v.detach().clone() for k, v in module.state_dict().items()}, meta)
    ckpt = path.with_suffix(".ckpt")
    if ckpt.is_file():
        ckpt.unlink()
