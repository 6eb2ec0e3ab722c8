"""Guard for policies that run in plaintext only (trained heads, comparison-heavy tracking)."""

from __future__ import annotations

from mpcache.core.backend import Backend
from mpcache.core.errors import UserError


def require_plain(backend: Backend, policy: str, why: str) -> None:
    """Raise a clear UserError when ``policy`` is run on a non-plaintext backend (e.g. under MPC)."""
    if backend.name != "plain":
        raise UserError(f"policy {policy!r} runs in plaintext only for now ({why}); "
                        f"got the {backend.name!r} backend")
