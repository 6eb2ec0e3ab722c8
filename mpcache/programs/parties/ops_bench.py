"""``mpcache bench ops``: each private operator at SmolLM2's shapes, stock CrypTen vs ours.

Inputs are activations recorded from the plaintext model (``record_inputs``): the last query's
attention scores over 128 and 2048 keys (9 heads, the layer with the widest score spread), the
SiLU input (gate projection, the layer with the largest |x|), the RMSNorm input (the residual
stream of the layer with the largest variance: SmolLM2's massive activations), the logits, and
1e5 gate inputs for one comparison layer. Errors are against float64 on the same inputs.

Implementations: ``crypten`` (CrypTen's own softmax, x*sigmoid(x), inv_sqrt, argmax, _ltz) and our
constructions under each approximation preset (``v1``, ``fast``; mpcache.core.backend.PRESETS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.eval.corpus import essays_ids
from mpcache.models import Transformer, load_model
from protocols.mpc.backend import MPCBackend
from protocols.net.accounting import Cost, Meter
from protocols.numerics import layers
from protocols.numerics import nonlinear as nl
from protocols.ring.shares import reveal

OPS = ("softmax128", "softmax2048", "silu1536", "rmsnorm576", "argmax49152", "compare1e5")


# --- recorded inputs (plaintext, run once by the launcher) ------------------------------------------


def record_inputs(model_spec: str, path: str, long: int = 2048, short: int = 128) -> None:
    """Run the plaintext model on essay text and save the operators' inputs to ``path``."""
    m = load_model(model_spec)
    seen: dict[str, list[torch.Tensor]] = {"scores": [], "gate": [], "resid": [], "gate_all": []}

    class Recorder(PlainBackend):
        def softmax(self, scores, mask=None):
            seen["scores"].append(scores[:, -1].detach().clone())  # the last query row of each KV head
            return super().softmax(scores, mask)

        def silu(self, x):
            seen["gate"].append(x[-1].detach().clone())
            seen["gate_all"].append(x.detach().reshape(-1).clone())
            return super().silu(x)

        def rms_norm(self, x, weight, eps):
            seen["resid"].append(x[-1].detach().clone())
            return super().rms_norm(x, weight, eps)

    model = Transformer(m.config, m.weights, Recorder())
    ids = essays_ids(m.tokenizer)
    out: dict[str, torch.Tensor] = {}
    for n in (short, long):
        for v in seen.values():
            v.clear()
        logits = model.forward(ids[:n], model.new_cache())
        rows = [s.reshape(-1, s.shape[-1])[: m.config.num_heads] for s in seen["scores"]]
        spread = [float((r.max(-1).values - r.min(-1).values).max()) for r in rows]
        out[f"softmax{n}"] = rows[max(range(len(rows)), key=spread.__getitem__)]
        if n == short:
            out["silu1536"] = max(seen["gate"], key=lambda g: float(g.abs().max()))
            out["rmsnorm576"] = max(seen["resid"], key=lambda x: float(x.pow(2).mean()))
            out["argmax49152"] = logits[-1].detach().clone()
            out["compare1e5"] = torch.cat(seen["gate_all"])[:100_000]
    out = {k: v.float().reshape(1, -1) if v.dim() == 1 else v.float() for k, v in out.items()}
    out["rms_eps"] = torch.tensor(m.config.rms_norm_eps)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)


def reference(op: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    if op.startswith("softmax"):
        return torch.softmax(x, -1)
    if op.startswith("silu"):
        return torch.nn.functional.silu(x)
    if op.startswith("rmsnorm"):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if op.startswith("argmax"):
        return x.argmax(-1).double()
    return (x < 0).double()


# --- the operators under MPC ------------------------------------------------------------------------


def run_op(op: str, impl: str, x, eps: float, numerics: nl.Numerics | None):
    """One operator on the secret x; returns a secret result comparable with ``reference``."""
    if impl == "crypten":
        if op.startswith("softmax"):
            return x.softmax(-1)
        if op.startswith("silu"):
            return x * x.sigmoid()
        if op.startswith("rmsnorm"):
            return x * ((x * x).mean(-1, keepdim=True) + eps).inv_sqrt()
        if op.startswith("argmax"):
            onehot = x.argmax(dim=-1, one_hot=True)
            return (onehot * torch.arange(x.shape[-1], dtype=torch.float32)).sum(-1)
        return x._ltz()
    if op.startswith("softmax"):
        return layers.softmax(x, None, numerics)
    if op.startswith("silu"):
        return layers.silu(x, numerics)
    if op.startswith("rmsnorm"):
        return layers.rms_norm(x, eps, numerics)
    if op.startswith("argmax"):
        return nl.row_max(x, with_index=True, nm=numerics)[1]
    return numerics.ltz(x)


def error(op: str, got: torch.Tensor, exact: torch.Tensor, x: torch.Tensor) -> float:
    """Max |got - exact|; for argmax the logit gap between the true max and the chosen entry; for a
    comparison the largest |x| whose sign came out wrong (0: none)."""
    if op.startswith("compare"):
        wrong = (got.double().reshape(exact.shape) - exact).abs() > 0.5
        return float(x.double().abs()[wrong].max()) if wrong.any() else 0.0
    if op.startswith("argmax"):
        idx = got.round().long().clamp(0, x.shape[-1] - 1)
        return float((x.double().max(-1).values - x.double().gather(-1, idx.reshape(-1, 1))[:, 0]).max())
    return float((got.double().reshape(exact.shape) - exact).abs().max())


def run(party, args) -> int:
    """Both parties: every (op, impl); party 0 writes one JSON record per pair."""
    inputs = torch.load(args.inputs)
    eps = float(inputs["rms_eps"])
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    records = []
    for impl in impls:
        approx = None if impl == "crypten" else Approximations.preset(impl)
        backend = MPCBackend(party, approx or Approximations(exact=False))
        meter: Meter = backend.meter
        for op in ops:
            value = inputs[op]
            x = backend.crypten.cryptensor(value if party.is_server else torch.zeros(value.shape), src=0)
            before = meter.snapshot().get(op, Cost())
            with meter.phase(op):
                start = time.perf_counter()
                out = run_op(op, impl, x, eps, backend.numerics)
                seconds = time.perf_counter() - start
            cost = meter.snapshot()[op] - before
            got = reveal(out)
            err = error(op, got, reference(op, value, eps), value)
            rec = {"kind": "ops", "op": op, "impl": impl, "shape": list(value.shape),
                   "dealer": party.dealer, "online_bytes": cost.online_bytes, "rounds": cost.rounds,
                   "seconds": seconds, "dealer_bytes": cost.dealer_bytes,
                   "dealer_rounds": cost.dealer_rounds, "max_error": err,
                   "approximations": None if approx is None else approx.__dict__,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            records.append(rec)
            if party.is_server:
                print(f"[bench ops] {op:12s} {impl:8s} {cost.online_bytes / 1e6:9.3f} MB "
                      f"{cost.rounds:5d} rounds {seconds:7.2f} s  max error {err:.2e}", flush=True)
    if party.is_server:
        with open(args.json, "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        print(table(records))
    return 0


def table(records: list[dict]) -> str:
    """Markdown: one row per op, one column group per implementation."""
    impls = list(dict.fromkeys(r["impl"] for r in records))
    ops = list(dict.fromkeys(r["op"] for r in records))
    head = "| op | " + " | ".join(f"{i}: MB / rounds / s / max err" for i in impls) + " |"
    lines = [head, "|---|" + "---|" * len(impls)]
    for op in ops:
        cells = []
        for impl in impls:
            r = next((r for r in records if r["op"] == op and r["impl"] == impl), None)
            cells.append("" if r is None else f"{r['online_bytes'] / 1e6:.3f} / {r['rounds']} / "
                         f"{r['seconds']:.2f} / {r['max_error']:.1e}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
