"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

import os
import sys


class UserError(Exception):
    """Bad input from the user (model name, prompt, options). Shown without a traceback."""


class RuntimeFault(RuntimeError):
    """A launch or communication problem of a private run: reported as one line, exit status 3."""


def say(line: str) -> None:
    """Write ``line`` to stderr in one ``write``: parties launched together share one pipe, and a
    line written in pieces (text, then newline) can be spliced with the other party's line."""
    sys.stderr.flush()
    os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))
