"""Attention through the cache's own rows (mpcache/core/selected.py): the same probabilities and outputs
as attention over the gathered clusters, in plaintext (the MPC run is checked against plaintext by
tests/test_mpc_policies.py)."""

from __future__ import annotations

import torch

from mpcache.core.backend import PlainBackend
from mpcache.core.selected import SelectedRows, attend, materialize
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec


class InPlaceBackend(PlainBackend):
    """PlainBackend that attends selected clusters in place, as the MPC backend does."""

    calls = 0

    def select_clusters(self, selection, x, count, size, picked, scores=None, shift=None):
        self.calls += 1
        return SelectedRows(selection, x, count, size, picked, scores, shift)


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
    # a scatter puts rows back where the selection took them, zeros elsewhere
    rows = torch.randn(h, 3, 2, generator=gen)
    spread = b.scatter(sel, rows, count)
    assert torch.equal(b.gather(sel, spread), rows) and spread.abs().sum() == rows.abs().sum()


def test_policies_generate_the_same_tokens_attending_in_place():
    m = load_model("random:tiny")
    ids = torch.randint(0, 200, (160,), generator=torch.Generator().manual_seed(1)).tolist()
    for spec in ("mpcache:s1=16:s2=8@0.1", "mpcache:s1=16:s2=8:hierarchy=false:static=false@0.1",
                 "quest:page=8@0.1"):
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
        assert torch.allclose(logits[0], logits[1], atol=1e-4), spec
