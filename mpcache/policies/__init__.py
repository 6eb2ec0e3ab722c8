"""KV-cache policies, one per file. ``make_policy(name, budget)`` builds one by name."""

from __future__ import annotations

from mpcache.errors import UserError
from mpcache.policies.base import Policy

POLICIES: dict[str, type[Policy]] = {"full": Policy}


def make_policy(name: str = "full", budget: float = 1.0) -> Policy:
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})")
    if not 0.0 < budget <= 1.0:
        raise UserError(f"--budget must be in (0, 1], got {budget}")
    return POLICIES[name]()


__all__ = ["POLICIES", "Policy", "make_policy"]
