"""Training to convergence for the trained scorers: AdamW, linear warmup then cosine decay to a floor,
clip by value, a held-out evaluation every few steps, and an early stop once the held-out loss is
flat (its best over the last ``patience`` evaluations is not ``tol`` better than the best before).

The weights kept are the best held-out ones. A progress bar shows the training and held-out loss;
every step is recorded (JSON lines: step, training loss, learning rate, seconds, and the held-out
metrics where evaluated). A checkpoint every ``checkpoint_every`` steps makes a killed run resume.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm


@dataclass
class FitConfig:
    max_steps: int = 4000  # cap
    lr: float = 5e-4
    warmup: int = 50
    floor: float = 0.1  # final learning rate as a fraction of lr (cosine to it at max_steps)
    clip: float = 0.5  # gradient clip by value (Locret's recipe)
    betas: tuple[float, float] = (0.9, 0.95)
    eval_every: int = 25
    patience: int = 8  # evaluations in the flat window
    tol: float = 0.003  # relative held-out improvement that still counts as progress
    min_steps: int = 300
    checkpoint_every: int = 50
    max_seconds: float = 0.0  # wall-clock cap on training (0: none)


def lr_factor(cfg: FitConfig, step: int, elapsed: float = 0.0) -> float:
    """Warmup, then cosine to ``floor`` over the budget: the step cap or, when nearer, the time cap
    (so a run stopped by time has decayed its learning rate too)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    if cfg.max_seconds:
        frac = max(frac, min(1.0, elapsed / cfg.max_seconds))
    return cfg.floor + (1 - cfg.floor) * 0.5 * (1 + math.cos(math.pi * frac))


def converged(vals: list[float], cfg: FitConfig, step: int) -> bool:
    if step < cfg.min_steps or len(vals) <= cfg.patience:
        return False
    before, recent = min(vals[: -cfg.patience]), min(vals[-cfg.patience :])
    return recent > before * (1 - cfg.tol) if before > 0 else recent >= before


def write_records(path: Path | None, records: list[dict]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def fit(kind: str, ckpt: Path, module: torch.nn.Module, cfg: FitConfig,
        step_fn: Callable[[int], torch.Tensor], val_fn: Callable[[], dict], meta: dict,
        records: Path | None = None, progress: bool = True) -> dict:
    """Train ``module`` with ``step_fn(step) -> loss`` until the held-out ``val_fn()["loss"]`` is flat or
    ``cfg.max_steps``; load the best held-out weights into ``module`` and return the training summary."""
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    state = {"step": 0, "elapsed": 0.0, "history": [], "vals": [], "best": None, "best_step": 0}
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved["meta"] == meta:
            module.load_state_dict(saved["module"])
            opt.load_state_dict(saved["opt"])
            state = saved["state"]
            print(f"{kind}: resuming from step {state['step']} ({ckpt})", file=sys.stderr)
    if state["step"] == 0:
        first = val_fn()
        state["history"].append({"step": 0, "seconds": 0.0, "val": first})
        state["vals"].append(first["loss"])
        state["best"] = copy.deepcopy(module.state_dict())
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc=f"train {kind}", unit="step",
               disable=not progress, file=sys.stderr)
    stop = "step cap"
    while state["step"] < cfg.max_steps:
        step = state["step"]
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step, state["elapsed"])
        opt.zero_grad(set_to_none=True)
        loss = step_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), cfg.clip)
        opt.step()
        rec = {"step": step + 1, "train_loss": round(float(loss.detach()), 6),
               "lr": round(opt.param_groups[0]["lr"], 8)}
        state["step"] = step + 1
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
            val = val_fn()
            rec["val"] = val
            state["vals"].append(val["loss"])
            if val["loss"] <= min(state["vals"]):
                state["best"], state["best_step"] = copy.deepcopy(module.state_dict()), state["step"]
        state["elapsed"] += time.perf_counter() - t0
        rec["seconds"] = round(state["elapsed"], 2)
        state["history"].append(rec)
        bar.set_postfix(train=f"{rec['train_loss']:.4f}", held_out=f"{state['vals'][-1]:.4f}")
        bar.update(1)
        if "val" in rec and converged(state["vals"], cfg, state["step"]):
            stop = "converged (held-out loss flat)"
            break
        if cfg.max_seconds and state["elapsed"] >= cfg.max_seconds:
            stop = "time cap"
            break
        if state["step"] % cfg.checkpoint_every == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"module": module.state_dict(), "opt": opt.state_dict(), "state": state, "meta": meta},
                       ckpt)
            write_records(records, state["history"])
    bar.close()
    write_records(records, state["history"])
    if not any("val" in r for r in state["history"][-1:]):  # last step not evaluated: evaluate it
        state["history"][-1]["val"] = last = val_fn()
        state["vals"].append(last["loss"])
        if last["loss"] <= min(state["vals"]):
            state["best"], state["best_step"] = copy.deepcopy(module.state_dict()), state["step"]
        write_records(records, state["history"])
    module.load_state_dict(state["best"])
    tail = [r["train_loss"] for r in state["history"] if "train_loss" in r][-cfg.eval_every :]
    return {"steps": state["step"], "stop": stop, "train_seconds": round(state["elapsed"], 1),
            "best_step": state["best_step"], "final_train_loss": round(sum(tail) / max(1, len(tail)), 6),
            "final_val_loss": state["vals"][-1], "best_val_loss": min(state["vals"]),
            "fit": asdict(cfg)}
