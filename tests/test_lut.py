"""exp(-y) from the dealer's one-hot digit tables, in plain ring arithmetic: the selected values of
two 9-bit or three 6-bit digits are what the table shares give at the public digits of c = y + r
(borrows included), and their products are exp(-y) at the quantised y the plaintext twin uses."""

import math

import pytest
import torch

from mpcache.core import approx
from protocols.ring.tables import (
    SCALE,
    digits_of,
    exp_spec,
    table_select,
    table_select3,
    tables,
    true_select,
    true_select3,
)

F, OFFSET = approx.EXP_FRAC_BITS, approx.EXP_OFFSET


def _ring(shape, gen) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen, dtype=torch.int64)


def _case(n: int, seed: int):
    """y_int over all 18-bit values, r, c = y_int + r: the middle digit equals r's (its borrow then
    depends on the one below) in about 1 of 64."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 1 << 18, (n,), generator=gen)
    y[:4] = torch.tensor([0, 1, (1 << 18) - 1, 1 << 12])
    r = _ring((n,), gen)
    return y, r, y + r, gen


def _onehot_shares(r, spec, gen):
    """Two additive shares of the one-hot tables of r's digits [n, D, 2^w]."""
    d = digits_of(r, spec)
    onehot = torch.zeros(*d.shape, 1 << spec.digit_bits, dtype=torch.int64).scatter_(-1, d.unsqueeze(-1), 1)
    other = _ring(tuple(onehot.shape), gen)
    return onehot - other, other


def _combine(values: list[torch.Tensor]) -> torch.Tensor:
    """lut's products on the opened values (plain ring ints), at SCALE fractional bits."""
    if len(values) == 4:
        e0, e0b, a, b = values
        return (e0 * a + e0b * (b - a)) >> SCALE
    e0, e0b, a1, b1, g1, q1, a2, b2 = values
    x, xb = e0 * a1 + e0b * (b1 - a1), e0b * b1
    z, w = a2 + g1 * (b2 - a2), q1 * (b2 - a2)
    return (x * z + xb * w) >> (2 * SCALE)


@pytest.mark.parametrize("bits", [9, 6])
def test_table_shares_select_the_digits_of_y_with_borrows(bits):
    spec = exp_spec(bits)
    y, r, c, gen = _case(20000, bits)
    tabs = tables(F, OFFSET, bits)
    truth, select = (true_select, table_select) if spec.digits == 2 else (true_select3, table_select3)
    args = tabs if spec.digits == 2 else (tabs,)
    digits = digits_of(c, spec)
    want = truth(r, digits, *args)
    s0, s1 = _onehot_shares(r, spec, gen)
    got = [a + b for a, b in zip(select(s0, digits, *args), select(s1, digits, *args), strict=True)]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g, w), f"value {i}"
    exact = torch.exp(-(y.double() + 0.5) / 2**F + OFFSET)  # what approx.exp_table computes
    value = _combine(want).double() / 2**SCALE
    assert (value - exact).abs().max() < 4 * 2.0**-SCALE
    # the table entries are rounded: three of them cost no more than a unit or two of 2^-16
    assert (value - exact).abs().mean() < 1.5 * 2.0**-SCALE


def test_three_digit_tables_are_a_fifth_of_two():
    two, three = exp_spec(9), exp_spec(6)
    assert two.digits * 2**two.digit_bits == 1024 and three.digits * 2**three.digit_bits == 192
    t0, t1 = tables(F, OFFSET, 9)
    u0, u1, u2 = tables(F, OFFSET, 6)
    assert torch.equal(t0[:64], u0)  # the same first digit's values at the same y
    assert u1[1] == round(math.exp(-64 / 2**F) * 2**SCALE)
    assert u2[1] == round(math.exp(-4096 / 2**F) * 2**SCALE)
    assert t1[1] == round(math.exp(-512 / 2**F) * 2**SCALE)
    with pytest.raises(ValueError):
        exp_spec(5)
