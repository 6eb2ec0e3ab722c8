"""MT19937 state recovery for tests/test_attack_randomness.py (the insecure reference only).

MT19937's untempered outputs x_k obey, for every k (not only at block boundaries),

    x_{k+624} = x_{k+397} ^ T(upper bit of x_k | lower 31 bits of x_{k+1}),

where T is the linear "twist" (shift right by one, XOR 0x9908B0DF when the low bit was set). So
624 consecutive outputs give every later one, and every earlier one: x_k's upper bit comes from
x_{k+624} ^ x_{k+397}, its lower 31 bits from x_{k+623} ^ x_{k+396}. Both directions are computed in
batches (227 words forward, 396 backward) with numpy: no per-word Python loop.

torch draws one int64 in [-2^63, 2^63 - 1) (CrypTen's ring element) from two 32-bit outputs, the
first as the high word: element = ((hi << 32) | lo) - 2^63 (mod 2^64); see ``words_to_ring``.
"""

from __future__ import annotations

import numpy as np

N, M = 624, 397
MATRIX_A = np.uint32(0x9908B0DF)
UPPER, LOWER = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)
SIGN = np.uint64(1 << 63)


def temper(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.uint32)
    y = y ^ (y >> np.uint32(11))
    y = y ^ ((y << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    return y ^ (y >> np.uint32(18))


def _undo_right(y: np.ndarray, shift: int) -> np.ndarray:
    x = y.copy()
    for _ in range(32 // shift + 1):
        x = y ^ (x >> np.uint32(shift))
    return x


def _undo_left(y: np.ndarray, shift: int, mask: int) -> np.ndarray:
    x = y.copy()
    for _ in range(32 // shift + 1):
        x = y ^ ((x << np.uint32(shift)) & np.uint32(mask))
    return x


def untemper(out: np.ndarray) -> np.ndarray:
    """The state words behind 32-bit outputs (tempering is invertible)."""
    y = np.asarray(out, dtype=np.uint32)
    y = _undo_right(y, 18)
    y = _undo_left(y, 15, 0xEFC60000)
    y = _undo_left(y, 7, 0x9D2C5680)
    return _undo_right(y, 11)


def _twist(upper_src: np.ndarray, lower_src: np.ndarray) -> np.ndarray:
    y = (upper_src & UPPER) | (lower_src & LOWER)
    return (y >> np.uint32(1)) ^ np.where(y & np.uint32(1), MATRIX_A, np.uint32(0))


def _untwist(t: np.ndarray) -> np.ndarray:
    """y with T(y) = t: the XOR with MATRIX_A happened iff t's top bit is set (y >> 1 has none)."""
    odd = (t & UPPER) != 0
    t = np.where(odd, t ^ MATRIX_A, t)
    return (t << np.uint32(1)) | odd.astype(np.uint32)


def forward(x: np.ndarray, count: int) -> np.ndarray:
    """``x`` (>= 624 consecutive state words) followed by the next ``count`` words."""
    out = np.empty(len(x) + count, dtype=np.uint32)
    out[: len(x)] = x
    n = len(x)
    while n < len(out):
        step = min(N - M, len(out) - n)
        i = np.arange(n - N, n - N + step)
        out[n : n + step] = out[i + M] ^ _twist(out[i], out[i + 1])
        n += step
    return out


def backward(x: np.ndarray, count: int) -> np.ndarray:
    """``count`` state words before ``x`` (>= 624 consecutive ones), followed by ``x``."""
    out = np.empty(len(x) + count, dtype=np.uint32)
    out[count:] = x
    start = count  # out[start:] is known
    while start > 0:
        step = min(M - 1, start)
        i = np.arange(start - step, start)  # the words to recover
        upper = _untwist(out[i + N] ^ out[i + M])  # T(upper(x_i) | lower(x_{i+1}))
        lower = _untwist(out[i + N - 1] ^ out[i + M - 1])  # T(upper(x_{i-1}) | lower(x_i))
        out[i] = (upper & UPPER) | (lower & LOWER)
        start -= step
    return out


def ring_to_words(elements: np.ndarray) -> np.ndarray:
    """int64 ring elements drawn by torch.randint(-2^63, 2^63 - 1) -> their 32-bit outputs, in
    draw order (high word first)."""
    raw = np.asarray(elements, dtype=np.int64).view(np.uint64) ^ SIGN
    words = np.empty(2 * len(raw), dtype=np.uint32)
    words[0::2] = (raw >> np.uint64(32)).astype(np.uint32)
    words[1::2] = (raw & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return words


def words_to_ring(words: np.ndarray) -> np.ndarray:
    """Consecutive 32-bit outputs (even count) -> the int64 ring elements torch makes of them."""
    words = np.asarray(words, dtype=np.uint64)
    raw = (words[0::2] << np.uint64(32)) | words[1::2]
    return (raw ^ SIGN).view(np.int64)


class Recovered:
    """An MT19937 output stream known from 624 consecutive outputs, indexed by output position
    relative to the first observed output (negative: earlier)."""

    def __init__(self, outputs: np.ndarray):
        outputs = np.asarray(outputs, dtype=np.uint32)
        if len(outputs) < N:
            raise ValueError(f"need {N} consecutive outputs, got {len(outputs)}")
        self.state = untemper(outputs[:N])  # x_0 .. x_623
        self.origin = 0  # index of self.state[0]

    def outputs(self, start: int, count: int) -> np.ndarray:
        """Tempered outputs at positions start .. start + count - 1."""
        if start < self.origin:
            self.state = backward(self.state, self.origin - start)
            self.origin = start
        end = start + count
        if end > self.origin + len(self.state):
            self.state = forward(self.state, end - self.origin - len(self.state))
        return temper(self.state[start - self.origin : end - self.origin])

    def ring(self, start_word: int, count: int) -> np.ndarray:
        """``count`` ring elements drawn from output position ``start_word`` on."""
        return words_to_ring(self.outputs(start_word, 2 * count))
