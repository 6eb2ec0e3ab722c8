"""The one place that imports optional heavy dependencies, on first use: matplotlib (figures) and
transformers (converting the bundled GGUF weights once). A generation or a private run never pays
for them; everything else in the package imports at module top."""

from __future__ import annotations

import importlib
from types import ModuleType

from mpcache.core.errors import UserError


def _load(name: str, why: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UserError(f"{why} needs the package {name.split('.')[0]!r} ({exc})") from exc


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend (no display here)."""
    matplotlib = _load("matplotlib", "plotting")
    matplotlib.use("Agg")
    return _load("matplotlib.pyplot", "plotting")


def transformers() -> ModuleType:
    return _load("transformers", "converting the GGUF weights")
