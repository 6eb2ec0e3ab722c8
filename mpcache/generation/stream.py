"""Decoded text printed as the tokens arrive (generate, the private demo, the chat)."""

from __future__ import annotations

import sys


class StreamPrinter:
    """Prints decoded text as tokens arrive (re-decodes the whole output: safe for multi-byte text)."""

    def __init__(self, tokenizer, stream=sys.stdout):
        self.tokenizer, self.stream = tokenizer, stream
        self.ids: list[int] = []
        self.shown = ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
            return
        self.stream.write(text[len(self.shown) :])
        self.stream.flush()
        self.shown = text

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
