"""The dealer tables' local arithmetic (protocols/ring/tables.py) against plain references."""

from __future__ import annotations

import pytest
import torch

from protocols.ring import tables
from protocols.ring.tables import DigitSpec, digits_of, onehot_tables_minus, tables_at


@pytest.mark.parametrize("shape,width,block",
                         [((5, 3), 8, 1 << 20), ((37, 4), 256, 512), ((2, 7, 2), 512, 1)])
def test_tables_at_is_the_entry_and_the_sum_above_it(shape, width, block, monkeypatch):
    # blocks smaller than the tensor (and one row per block) give the same as one pass
    monkeypatch.setattr(tables, "TABLE_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-2**62, 2**62, (*shape, width), generator=g)
    c = torch.randint(0, width, shape, generator=g)
    at, above = tables_at(t, c)
    rows, idx = t.reshape(-1, width), c.reshape(-1)
    want_at = torch.stack([rows[i, j] for i, j in enumerate(idx.tolist())]).view(shape)
    want_above = torch.stack([rows[i, j + 1:].sum() for i, j in enumerate(idx.tolist())]).view(shape)
    assert torch.equal(at, want_at) and torch.equal(above, want_above)


def test_shared_tables_open_to_the_one_hot_of_r_and_its_suffix():
    # party 0's tables built in place in party 1's (onehot_tables_minus), read at public digits c:
    # the shares sum to [r_i == c_i] and [r_i > c_i], digit by digit
    spec = DigitSpec(0, 3, 4)
    g = torch.Generator().manual_seed(1)
    r = torch.randint(0, 2**12, (50,), generator=g)
    c = torch.randint(0, 2**12, (50,), generator=g)
    n = r.numel() * spec.digits << spec.digit_bits
    other = torch.randint(-2**62, 2**62, (n,), generator=g)
    mine = onehot_tables_minus(r, spec, False, other.clone())
    tshape = (50, spec.digits, 1 << spec.digit_bits)
    cd, rd = digits_of(c, spec), digits_of(r, spec)
    e0, a0 = tables_at(mine.view(tshape), cd)
    e1, a1 = tables_at(other.view(tshape), cd)
    assert torch.equal(e0 + e1, (rd == cd).long()) and torch.equal(a0 + a1, (rd > cd).long())
