"""Tokenizers: the model's own (Hugging Face) or a byte-level one for random-weight models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as RustTokenizer


class Tokenizer(Protocol):
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str, chat: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` plus its chat template, read without importing transformers
    (that import alone costs ~2.5 s). ``chat=True`` renders the template like ``apply_chat_template``.
    """

    def __init__(self, folder: str, eos_token_ids: tuple[int, ...] = ()):
        path = Path(folder)
        self.inner = RustTokenizer.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        self.special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token")}
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        self.chat_template = template if isinstance(template, str) else None
        ids = set(eos_token_ids)
        if self.special["eos_token"]:
            eos_id = self.inner.token_to_id(self.special["eos_token"])
            if eos_id is not None:
                ids.add(eos_id)
        self.eos_token_ids = tuple(sorted(ids))

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def encode(self, text: str, chat: bool = False) -> list[int]:
        if chat:
            return self.encode_chat([{"role": "user", "content": text}])
        return self.inner.encode(text).ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation, ending with the assistant's generation prompt."""
        if not self.has_chat_template:
            raise ValueError("this model's tokenizer has no chat template")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        rendered = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=True, **self.special
        )
        return self.inner.encode(rendered, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids, skip_special_tokens=True)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(value) -> str | None:
    """Special tokens are stored either as a string or as {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255), plus BOS=256 and EOS=257. For random-weight models."""

    BOS, EOS = 256, 257
    eos_token_ids = (EOS,)
    has_chat_template = False

    def __init__(self, vocab_size: int):
        if vocab_size < 258:
            raise ValueError("ByteTokenizer needs a vocabulary of at least 258 tokens")

    def encode(self, text: str, chat: bool = False) -> list[int]:
        if chat:
            text = f"User: {text}\nAssistant:"
        return [self.BOS, *text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
