"""Predicting the dealer requests of a token before the parties make them (``protocols.net.ahead``).

Two predictors, both pure functions of the public requests already made, so both parties compute
the same prediction without a message:

- across steps (``predict``): a decode step repeats the previous one item by item; every integer
  (shapes, mask keys, views) is extrapolated from the last two or three steps;
- within a step (``Periodic``): the layers of a forward repeat one another (same shapes, mask keys
  shifted by the same count), so once two layers are seen the next layer is predicted from them:
  what covers a prefill, and the first steps of a session.
"""

from __future__ import annotations

import json
import re

from protocols.net import links

_MISSING = object()  # no value (None is a value in a header)
_DIGITS = re.compile(r"-?\d+")
MIN_PERIOD = 8  # a shorter repetition is a loop inside one layer, not a layer
RECENT = 6  # earlier positions of a request's skeleton tried as a period start


def header(name: str, args, kwargs: dict | None = None) -> dict:
    """What names an item: the request as the dealer runs it (tagged JSON: tuples survive)."""
    return {"function": name, "args": links.encode(list(args)), "kwargs": links.encode(kwargs or {})}


def _extrapolate(last, before, oldest=_MISSING):
    """``last`` with every integer that moved since ``before`` moved once more: by the same step,
    or with ``oldest`` by the same second difference too (a count of pairs grows quadratically).
    Never below 0 (a prefill followed by a step would give negative sizes: then ``last``)."""
    if isinstance(last, bool) or isinstance(before, bool):
        return last
    if isinstance(last, int) and isinstance(before, int):
        if last == before:
            return last
        if isinstance(oldest, int) and not isinstance(oldest, bool):
            guess = 3 * last - 3 * before + oldest
        else:
            guess = 2 * last - before
        return guess if guess >= 0 else last
    nested = oldest if type(oldest) is type(last) else _MISSING
    if isinstance(last, list) and isinstance(before, list) and len(last) == len(before):
        if nested is not _MISSING and len(nested) != len(last):
            nested = _MISSING
        return [_extrapolate(a, b, _MISSING if nested is _MISSING else nested[i])
                for i, (a, b) in enumerate(zip(last, before, strict=True))]
    if isinstance(last, dict) and isinstance(before, dict) and last.keys() == before.keys():
        if nested is not _MISSING and nested.keys() != last.keys():
            nested = _MISSING
        return {k: _extrapolate(v, before[k], _MISSING if nested is _MISSING else nested[k])
                for k, v in last.items()}
    return last


def elements(h: dict) -> int:
    """A size of a request: the largest product of a shape in its arguments (shapes travel as
    tuples or sizes; ``trunc_material``'s is a list, its divisors are not a shape)."""
    best = 1
    args = h.get("args", [])
    stack = list(args)
    if h.get("function") == "trunc_material" and args and isinstance(args[0], list):
        stack[0] = {"t": args[0]}
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            dims = obj.get("s", obj.get("t"))
            if isinstance(dims, list) and dims and all(isinstance(x, int) and not isinstance(x, bool)
                                                       for x in dims):
                n = 1
                for x in dims:
                    n *= max(x, 0)
                best = max(best, n)
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)
    return best


# Requests whose arguments after the first are a fixed spec (digit count and width, divisors,
# flags), not a size: only their shape is extrapolated. A digit width extrapolated like a size once
# made a guessed comparison table of 12 GB (width 9 -> 19 bits).
SPEC_ARGS = {"cmp_tables", "trunc_material"}


def answer_elements(h: dict) -> int:
    """Ring elements of the dealer's answer to ``h`` (its memory), as far as the header says:
    a comparison table is 2^width entries per digit per element, twice with its m tables."""
    n = elements(h)
    args = h.get("args", [])
    if h.get("function") == "cmp_tables" and len(args) >= 4:
        digits, width, with_m = args[1], args[2], args[3]
        if isinstance(digits, int) and isinstance(width, int) and 0 <= width <= 62:
            return n * max(digits, 1) * (1 << width) * (2 if with_m else 1) + n
    return n


def _guess(last: dict, before: dict | None, oldest: dict | None) -> dict:
    if before is None or last["function"] != before["function"]:
        return last
    aligned = oldest is not None and oldest["function"] == last["function"]
    guess = _extrapolate(last, before, oldest if aligned else _MISSING)
    if last["function"] in SPEC_ARGS and guess["args"][1:] != last["args"][1:]:
        guess = {**guess, "args": guess["args"][:1] + last["args"][1:]}
    # never more than twice a size the parties really used: a wrong guess costs the dealer little
    return guess if answer_elements(guess) <= 2 * answer_elements(last) + 64 else last


def predict(history: list[list[dict]]) -> list[dict]:
    """The next step's items from the last one or two steps (item by item, same position)."""
    if not history:
        return []
    last = history[-1]
    before = history[-2] if len(history) > 1 else []
    oldest = history[-3] if len(history) > 2 else []
    return [_guess(h, before[i] if i < len(before) else None, oldest[i] if i < len(oldest) else None)
            for i, h in enumerate(last)]



def skeleton(h: dict) -> str:
    """A request without its integers: equal for the same request in two layers."""
    return h["function"] + _DIGITS.sub("0", json.dumps(h["args"], separators=(",", ":")))


class Periodic:
    """The requests of the current step, and the period they repeat with (layers)."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.sigs: list[str] = []
        self.where: dict[str, list[int]] = {}

    def observe(self, h: dict) -> None:
        sig = skeleton(h)
        at = self.where.setdefault(sig, [])
        at.append(len(self.sigs))
        del at[:-RECENT]
        self.sigs.append(sig)
        self.items.append(h)

    def period(self) -> int | None:
        """The shortest P such that the last 2P skeletons repeat with period P, if any."""
        n = len(self.sigs) - 1
        if n < 0:
            return None
        for j in reversed(self.where[self.sigs[n]][:-1]):
            p = n - j
            if p >= MIN_PERIOD and n - 2 * p + 1 >= 0 and \
                    self.sigs[n - p + 1: n + 1] == self.sigs[n - 2 * p + 1: n - p + 1]:
                return p
        return None

    def extend(self, pred: list, start: int, count: int, p: int) -> list[dict]:
        """Guesses for slots start..start+count-1 from the items (or guesses) one, two and three
        periods earlier (``pred``: this step's guesses by slot, None where there is none)."""
        def at(slot: int) -> dict | None:
            if slot < 0:
                return None
            if slot < len(self.items):
                return self.items[slot]
            return pred[slot] if slot < len(pred) else None

        out: list[dict] = []
        for slot in range(start, start + count):
            last = at(slot - p) if slot - p < start else out[slot - p - start]
            if last is None:
                break
            before = at(slot - 2 * p) if slot - 2 * p < start else out[slot - 2 * p - start]
            oldest = at(slot - 3 * p) if slot - 3 * p < start else out[slot - 3 * p - start]
            out.append(_guess(last, before, oldest))
        return out
