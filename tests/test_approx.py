"""The MPC approximations (as PlainBackend simulates them) stay close to exact math on the ranges
SmolLM2 produces (RMSNorm variances 0.007 .. 1e6, gate inputs |x| <= 50, score spreads <= 62)."""

import torch

from mpcache.core import approx
from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend


def test_silu_inv_sqrt_reciprocal_accuracy():
    x = torch.linspace(-60, 60, 20001, dtype=torch.float64)
    assert (x * approx.sigmoid(x, 8, 3) - torch.nn.functional.silu(x)).abs().max() < 5e-3
    v = torch.logspace(-3.5, 7, 2000, dtype=torch.float64)
    assert ((approx.inv_sqrt(v, 3) * v.sqrt()) - 1).abs().max() < 1e-4
    d = torch.linspace(1, 60000, 5000, dtype=torch.float64)
    assert ((approx.reciprocal_at_least_one(d, 5) * d) - 1).abs().max() < 1e-5


def test_masked_softmax_is_finite_and_close_to_exact():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 8, 40, generator=gen) * 20
    mask = torch.arange(8)[:, None] + 32 >= torch.arange(40)[None, :]  # causal, offset
    exact = PlainBackend().softmax(scores, mask)
    approximate = PlainBackend(Approximations(exact=False)).softmax(scores, mask)
    assert torch.isfinite(approximate).all()
    assert (approximate - exact).abs().max() < 2e-3
    assert (approximate * ~mask).abs().max() == 0


def test_rms_norm_approximation_with_massive_activations():
    x = torch.randn(4, 576, dtype=torch.float64) * 0.05
    x[1, 7] = 2.2e4  # SmolLM2-like massive activation
    w = torch.ones(576, dtype=torch.float64)
    exact = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert (approx.rms_norm(x, w, 1e-5, 3) - exact).abs().max() < 1e-3


def test_fast_preset_stays_close_on_smollm2_ranges():
    """The fast preset's formulas (minimax initial guesses, fewer Newton steps, exp by digit tables)
    keep the errors of the v1 ones on the same ranges."""
    fast = Approximations.preset("fast")
    y = torch.linspace(0, 200, 40001, dtype=torch.float64)
    assert ((approx.exp_table(y) - torch.exp(-y)).abs() / torch.exp(-y)).max() < 1e-3
    x = torch.linspace(-60, 60, 20001, dtype=torch.float64)
    got = PlainBackend(fast, dtype=torch.float64).silu(x)
    assert (got - torch.nn.functional.silu(x)).abs().max() < 1e-3
    v = torch.logspace(-3.5, 7, 2000, dtype=torch.float64)
    got = approx.inv_sqrt(v, fast.inv_sqrt_iterations, "minimax", fast.range_step)
    assert ((got * v.sqrt()) - 1).abs().max() < 1e-5
    d = torch.linspace(1, 60000, 5000, dtype=torch.float64)
    got = approx.reciprocal_at_least_one(d, fast.reciprocal_iterations, "minimax", fast.range_step)
    assert ((got * d) - 1).abs().max() < 2e-5
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 8, 40, generator=gen) * 20
    mask = torch.arange(8)[:, None] + 32 >= torch.arange(40)[None, :]
    exact = PlainBackend().softmax(scores, mask)
    approximate = PlainBackend(fast).softmax(scores, mask)
    assert (approximate - exact).abs().max() < 2e-3
    assert (approximate * ~mask).abs().max() == 0


def test_presets_are_named_and_unknown_ones_are_a_user_error():
    import pytest

    from mpcache.core.errors import UserError

    assert Approximations.preset("v1") == Approximations(exact=False)
    assert Approximations.preset("fast").name == "fast"
    with pytest.raises(UserError):
        Approximations.preset("quick")
