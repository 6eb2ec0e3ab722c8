"""Attention through the cache's own rows (mpcache/core/selected.py): the same probabilities and outputs
as attention over the gathered clusters, in plaintext (the MPC run is checked against plaintext by
tests/test_mpc_policies.py)."""

from __future__ import annotations

import torch

from mpcache.core.backend import PlainBackend
from mpcache.core.selected import Outer, SelectedRows, attend, materialize
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec


class InPlaceBackend(PlainBackend):
    """PlainBackend that attends selected clusters in place, as the MPC backend does."""

    calls = nested = 0

    def select_clusters(self, selection, x, count, size, picked, scores=None, shift=None, outer=None):
        self.calls += 1
        self.nested += outer is not None
        return SelectedRows(selection, x, count, size, picked, scores, shift, outer)


def test_attend_in_place_equals_attention_over_the_gathered_rows():
    b = PlainBackend()
    gen = torch.Generator().manual_seed(0)
    h, g, d, count, size, tail = 2, 3, 4, 5, 4, 3
    n = count * size + tail
    k, v = torch.randn(h, n, d, generator=gen), torch.randn(h, n, d, generator=gen)
    q = torch.randn(h, g, d, generator=gen)
    sel = torch.tensor([[0, 2, 4], [1, 2, 3]])  # per head, ascending
    keys, values = SelectedRows(sel, k, count, size, 3), SelectedRows(sel, v, count, size, 3)
    probs, out = attend(b, q, keys, values)
    kg, vg = materialize(b, keys), materialize(b, values)
    assert kg.shape == keys.shape == (h, 3 * size + tail, d)
    expected = torch.softmax(q @ kg.transpose(-1, -2), -1)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(out, expected @ vg, atol=1e-5)
    # nested: parents (4 tokens) 1, 3 / 0, 4 of 5, then children (2 tokens) among their 4 children
    outer = Outer(torch.tensor([[1, 3], [0, 4]]), 2, 4)
    inner = torch.tensor([[0, 3], [1, 2]])
    flat_sel = b.compose(outer.selection, inner, 2)  # [[2, 7], [1, 8]]
    nested_k, nested_v = (SelectedRows(inner, x, 2 * count, 2, 2, outer=outer) for x in (k, v))
    flat_k, flat_v = (SelectedRows(flat_sel, x, 2 * count, 2, 2) for x in (k, v))
    assert torch.equal(materialize(b, nested_k), materialize(b, flat_k))
    for got, want in zip(attend(b, q, nested_k, nested_v), attend(b, q, flat_k, flat_v), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    # a scatter puts rows back where the selection took them, zeros elsewhere
    rows = torch.randn(h, 3, 2, generator=gen)
    spread = b.scatter(sel, rows, count)
    assert torch.equal(b.gather(sel, spread), rows) and spread.abs().sum() == rows.abs().sum()


def test_policies_generate_the_same_tokens_attending_in_place():
    m = load_model("random:tiny")
    ids = torch.randint(0, 200, (160,), generator=torch.Generator().manual_seed(1)).tolist()
    for spec in ("mpcache:s1=16:s2=8@0.1", "mpcache:s1=16:s2=8:hierarchy=false:static=false@0.1",
                 "quest:page=8@0.1", "mpcache:preset=lean:s1=16:s2=4@0.1",
                 "mpcache:preset=paper:s1=16:s2=4@0.1"):
        logits = []
        in_place = InPlaceBackend()
        for backend in (PlainBackend(), in_place):
            model = Transformer(m.config, m.weights, backend)
            name, _, budget = spec.partition("@")
            cache = model.new_cache(parse_spec(name, float(budget)))
            out = [model.forward(ids, cache)[-1]]
            for _ in range(4):
                out.append(model.forward([int(out[-1].argmax())], cache)[-1])
            logits.append(torch.stack(out))
        assert in_place.calls > 0, spec  # clusters were really selected
        # two-level selections are applied level by level (not composed)
        assert in_place.nested > 0 or spec.startswith(("quest", "mpcache:s1=16:s2=8:h")), spec
        assert torch.allclose(logits[0], logits[1], atol=1e-4), spec
