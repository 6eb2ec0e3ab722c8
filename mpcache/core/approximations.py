"""The approximation settings of the nonlinear functions, as frozen values: a named preset
(``exact``, ``v1``, ``fast``, ``fast-lite``, ``fast-lite3``) or a custom one. A backend is built for
one of them and never changes it; the formulas live in ``approx`` (plaintext) and
``protocols.numerics`` (MPC)."""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.core.errors import UserError


@dataclass(frozen=True)
class Approximations:
    """Which non-linear approximations to use. ``exact`` everywhere means plain torch math.

    The MPC backend always approximates; PlainBackend uses these to simulate the MPC numerics so
    their accuracy effect can be measured in plaintext. Named presets (:meth:`preset`): ``v1`` (the
    first construction, the defaults below) and ``fast`` (fewer rounds; see ``PRESETS``).
    """

    exact: bool = True
    exp_iterations: int = 8  # exp(x) ~ (1 + x / 2^n)^(2^n)
    # exp(-y), y >= 0 (softmax after the max, SiLU's exp(-|x|)): "limit" (the formula above, n
    # squarings) or "table" (dealer one-hot tables of two 9-bit digits, y < 256; 2 rounds).
    exp_method: str = "limit"
    reciprocal_iterations: int = 5  # Newton steps for 1/(softmax denominator), after range reduction
    softmax_clip: float = 0.0  # if > 0, scores below max - clip are dropped (MPC-friendly mask)
    inv_sqrt_iterations: int = 3  # Newton steps for RMSNorm's 1/sqrt(variance), after range reduction
    sigmoid_iterations: int = 3  # Newton steps for 1/(1 + exp(-|x|)) in SiLU
    # Initial guess of the Newton iterations on the reduced range: "chord" (the secant line) or
    # "minimax" (the linear guess with the least relative error: fewer steps for the same accuracy).
    initial_guess: str = "chord"
    # "newton", or "goldschmidt": the same iterates with independent products per step, and range
    # reductions' output scales applied in the round that scales the input (numerics/goldschmidt.py).
    iteration: str = "newton"
    # Range reductions compare with 2^(k * range_step): 2 (powers of 4, reduced range [1/4, 1)) or
    # 0.25 (quarter octaves, [2^-1/4, 1): the initial guess is good enough for one Newton step).
    range_step: float = 2.0
    # Secret comparisons: "crypten" (CrypTen's binary adder circuit, ~8 rounds) or "dealer" (the
    # dealer's one-hot digit tables, 1 + ceil(log2(digits)) rounds; protocols/numerics/digits.py).
    comparison: str = "crypten"
    # Digit width of the dealer comparison (5 or 10): 10 bits = 2 digits, 2 rounds and 80 B per
    # comparison; 5 bits = 4 digits, 3 rounds, 272 B, but 1/16 of a TTP dealer's table traffic
    # (2 * 2 * 2^10 vs 2 * 4 * 2^5 entries per comparison; with TFP the tables are never built).
    cmp_digit_bits: int = 10
    # Max / argmax tournaments: elements compared per group in one comparison layer ("arity" 2 is
    # the binary tree; 4 compares all pairs of 4 at once and picks the winner by a product tree).
    max_arity: int = 2
    # exp by tables: the digits of y's 18 bits, 9 (two digits, 2 x 512 entries per element) or 6 (three
    # digits, 3 x 64: 1/5 of a TTP dealer's table traffic, one more round of products). The value is
    # the same, so the plaintext simulation does not depend on it (protocols/numerics/lut.py).
    exp_digit_bits: int = 9
    # The formulas are in mpcache/core/approx.py (plaintext) and protocols/numerics/nonlinear.py (MPC).

    def __post_init__(self):
        if self.exp_digit_bits not in (6, 9):
            raise UserError(f"exp_digit_bits must be 9 (two digits) or 6 (three), got {self.exp_digit_bits}")

    @classmethod
    def preset(cls, name: str) -> Approximations:
        """``exact``, ``v1`` or ``fast`` (see ``PRESETS``)."""
        if name not in PRESETS:
            raise UserError(f"unknown approximation preset {name!r} (choose {', '.join(PRESETS)})")
        return cls(**PRESETS[name])

    @property
    def name(self) -> str:
        """The preset these settings equal, else "custom"."""
        for key, values in PRESETS.items():
            if self == Approximations(**values):
                return key
        return "custom"


PRESETS: dict[str, dict] = {
    "exact": {},
    "v1": {"exact": False},
    # Chosen by `mpcache bench ops`: dealer comparisons and exp tables, grouped max, quarter-octave
    # range reductions with minimax guesses and one Newton step (max relative error 1.4e-5
    # reciprocal, 3.1e-6 inverse square root), two for sigmoid's 1/(1+u) (1.2e-5).
    "fast": {"exact": False, "comparison": "dealer", "initial_guess": "minimax", "range_step": 0.25,
             "reciprocal_iterations": 1, "inv_sqrt_iterations": 1, "sigmoid_iterations": 2,
             "max_arity": 8, "exp_method": "table", "iteration": "goldschmidt"},
}
# fast with 5-bit comparison digits: one more round per comparison, far less TTP dealer traffic.
PRESETS["fast-lite"] = {**PRESETS["fast"], "cmp_digit_bits": 5}
# fast-lite with exp's tables in three 6-bit digits: 1/5 of the TTP dealer's exp tables, one more round.
PRESETS["fast-lite3"] = {**PRESETS["fast-lite"], "exp_digit_bits": 6}


# The preset every MPC path uses unless told otherwise (`--approx`): same accuracy as v1 in the
# plaintext evaluation, ~1/3 of its rounds per decode token.
MPC_DEFAULT = "fast"


# With a TTP dealer the comparison tables travel from the dealer: fast's 10-bit digits made the
# dealer of a SmolLM2 run (L=128) grow past 12 GB and be killed; 5-bit digits cut the tables 16-fold
# for one more round per comparison. exp's tables in three 6-bit digits (fast-lite3) then halved the
# dealer traffic of a SmolLM2 chat turn (59 + 16 tokens: 65.5 -> 36.1 GB) and its time (docs/results/chat.md).
MPC_DEFAULT_TTP = "fast-lite3"


def mpc_default(dealer: str) -> str:
    """The approximation preset an MPC run uses when none is named, by dealer."""
    return MPC_DEFAULT_TTP if dealer == "ttp" else MPC_DEFAULT
