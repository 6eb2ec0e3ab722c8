"""The dealer's fixed masks: a product always uses the current B[key], never a stale transpose."""

import torch

from protocols.ring.dealer import apply
from protocols.ring.fixed_masks import FixedMasks, wants_transposed


def _ring(*shape: int) -> torch.Tensor:
    return torch.randint(-(2**62), 2**62, shape, dtype=torch.int64)


def test_a_new_mask_under_a_used_key_is_the_one_multiplied():
    """A second setup reuses keys: the embedding-sized B's transpose of the first must not deal C."""
    masks, a = FixedMasks(), _ring(3, 4100)  # one-hot rows times the embedding table
    first, second = _ring(4100, 8), _ring(4100, 8)
    masks.set(0, first)
    assert wants_transposed("matmul", a.shape, first)
    b, b_t = masks.operands(0, "matmul", a.shape)
    assert b_t is not None and torch.equal(apply("matmul", a, b, b_t), a @ first)
    masks.set(0, second)
    assert torch.equal(apply("matmul", a, *masks.operands(0, "matmul", a.shape)), a @ second)


def test_products_follow_extend_view_and_forget():
    masks, rows = FixedMasks(), _ring(5, 6)
    masks.set(7, rows)
    more = _ring(2, 6)
    masks.extend(7, more, dim=0)
    whole = torch.cat([rows, more])
    a = _ring(1, 6)
    assert torch.equal(apply("matmul_t", a, *masks.operands(7, "matmul_t", a.shape)), a @ whole.T)
    view = ((3, 6), (6, 1), 6)  # rows 1-3
    assert torch.equal(masks.view(7, view), whole[1:4])
    x = _ring(3, 6)
    assert torch.equal(apply("mul", x, *masks.operands(7, "mul", x.shape, view)), x * whole[1:4])
    masks.forget(7)
    try:
        masks.view(7)
    except KeyError:
        pass
    else:
        raise AssertionError("a forgotten mask is still dealt")
