"""``--prefill plaintext``: a COST BENCHMARK mode, not a private run.

MPC prefill of a 2k-token prompt is far beyond a small machine, yet the decode cost at long context
is what eviction changes. So the server computes the prompt's KV cache (and the prompt information
the policies read: window rows of attention, accumulated attention) in plaintext, with the same
approximations as the MPC numerics, and secret-shares it. From there everything runs under 2PC:
the policy's one-time static stage (accounted as ``static-eviction``) and every decode step.
The server sees the prompt in this mode, and the first token is made public.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpcache.core.backend import PlainBackend
from mpcache.core.cache import KVCache
from mpcache.core.policy import Policy, PromptInfo
from mpcache.generation.prefill import prefill
from mpcache.models import Transformer, load_model

NOTE = ("--prefill plaintext: COST BENCHMARK, NOT A PRIVATE RUN. The server computed the prompt's KV "
        "cache in plaintext and secret-shared it; the static stage and decode ran under 2PC.")


class _SharedPrompts(Sequence):
    """Each layer's prompt info, secret-shared by the server when a policy reads it (no traffic:
    sharing from party 0 uses pseudo-random zero shares), so only one layer is held at a time."""

    def __init__(self, backend, shapes: list[dict], plain: list[PromptInfo] | None, num_layers: int):
        self.backend, self.shapes, self.plain, self.num_layers = backend, shapes, plain, num_layers

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> PromptInfo:
        share = self.backend.share_from_server
        info = self.plain[i] if self.plain is not None else None
        parts = {}
        for name, shape in self.shapes[i].items():
            value = getattr(info, name) if info is not None else None
            parts[name] = share(value, shape) if shape is not None else None
        return PromptInfo(parts["q"], parts["attn_colsum"], self.num_layers, parts["probs"])


def shared_prefill(pm, model_spec: str, prompt_ids: list[int] | None, length: int, policy: Policy
                   ) -> tuple[KVCache, int]:
    """Prefill in plaintext on the server, share the cache, run ``policy``'s static stage under MPC.

    Returns the (secret) cache handed to ``policy`` and the first new token (public). Both parties
    call this; only the server passes ``prompt_ids``.
    """
    backend, cfg = pm.backend, pm.model.config
    plain_prompts, token = None, None
    pre = None
    if pm.party.is_server:
        loaded = load_model(model_spec, with_tokenizer=False)
        plain = Transformer(cfg, loaded.weights, PlainBackend(backend.approx))
        pre = prefill(plain, prompt_ids, [policy], rows_budget_bytes=None)
        plain_prompts = pre.prompts
        token = plain.backend.next_token(pre.logits)
    token = backend.comm.broadcast_obj(token, 0)
    rows = min(length, policy.prompt_rows(length))
    hkv, h, d, g = cfg.num_kv_heads, cfg.num_heads, cfg.head_dim, cfg.group_size
    shapes = [{"q": (h, length, d), "attn_colsum": (hkv, length),
               "probs": (hkv, g, rows, length) if rows else None} for _ in range(cfg.num_layers)]
    cache = KVCache.empty(cfg.num_layers)
    with backend.phase("prefill-share"):
        for i, lc in enumerate(cache.layers):
            for name in ("k", "v"):
                value = getattr(pre.cache.layers[i], name) if pre is not None else None
                setattr(lc, name, backend.fix(backend.share_from_server(value, (hkv, length, d))))
            lc.appended = length
    del pre
    prompts = _SharedPrompts(backend, shapes, plain_prompts, cfg.num_layers)
    return cache.start(policy, prompts, backend), token
