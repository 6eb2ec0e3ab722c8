"""KV-cache policies, one per file. ``make_policy(name, budget, **options)`` builds one by name."""

from __future__ import annotations

import dataclasses

from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.policies.attention_gate import AttentionGatePolicy
from mpcache.policies.h2o import H2OPolicy
from mpcache.policies.kvcrush import KVCrushPolicy
from mpcache.policies.kvcrush_mikv import KVCrushMiKVPolicy
from mpcache.policies.lazyeviction import LazyEvictionPolicy
from mpcache.policies.locret import LocretPolicy
from mpcache.policies.mikv import MiKVPolicy
from mpcache.policies.mpcache import MPCachePolicy
from mpcache.policies.quest import QuestPolicy
from mpcache.policies.snapkv import SnapKVPolicy
from mpcache.policies.streaming import StreamingPolicy

POLICIES: dict[str, type[Policy]] = {
    "full": Policy,
    "streaming": StreamingPolicy,
    "h2o": H2OPolicy,
    "snapkv": SnapKVPolicy,
    "quest": QuestPolicy,
    "mpcache": MPCachePolicy,
    "mikv": MiKVPolicy,
    "kvcrush": KVCrushPolicy,
    "kvcrush+mikv": KVCrushMiKVPolicy,
    "lazyeviction": LazyEvictionPolicy,
    "locret": LocretPolicy,
    "attention-gate": AttentionGatePolicy,
}


def make_policy(name: str = "full", budget: float = 1.0, **options) -> Policy:
    """A fresh policy (one per sequence). ``options`` set the policy's dataclass fields."""
    fields = _options_of(name)
    if not 0.0 < budget <= 1.0:
        raise UserError(f"--budget must be in (0, 1], got {budget}")
    for key in options:
        if key not in fields:
            raise UserError(f"policy {name!r} has no option {key!r} (options: {_known(fields)})")
    return POLICIES[name](budget=budget, **options)


def _options_of(name: str) -> dict[str, dataclasses.Field]:
    """The settable options of policy ``name`` (its dataclass fields but the budget)."""
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})")
    return {f.name: f for f in dataclasses.fields(POLICIES[name]) if f.name != "budget"}


def _known(fields: dict) -> str:
    return ", ".join(sorted(fields)) or "none"


def parse_options(name: str, items: list[str] | None) -> dict:
    """``KEY=VALUE`` strings -> typed options for policy ``name`` (bool/int/float/str fields)."""
    fields = _options_of(name)
    options: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise UserError(f"bad policy option {item!r} for {name!r} (KEY=VALUE; options: {_known(fields)})")
        options[key] = _convert(key, raw, fields[key].default, str(fields[key].type))
    return options


def supported(backend: str) -> list[str]:
    """The policies that run on ``backend`` ("plain" or "mpc")."""
    return [name for name, cls in POLICIES.items() if backend in cls.backends]


def check_supported(spec: str, backend: str) -> None:
    """Refuse, with one line and before any setup, a policy spec its backend cannot run."""
    name = spec.strip().split(":")[0]
    _options_of(name)
    cls = POLICIES[name]
    if backend not in cls.backends:
        raise UserError(f"policy {name!r} runs in plaintext only ({cls.plaintext_only_because}); "
                        f"under MPC use one of: {', '.join(supported(backend))}")


def parse_spec(spec: str, budget: float = 1.0) -> Policy:
    """``NAME[:KEY=VALUE...]`` (e.g. ``mpcache:static=false:r2=0.2``) -> a fresh policy."""
    name, *items = spec.strip().split(":")
    return make_policy(name, budget, **parse_options(name, items))


def _convert(key: str, raw: str, default, kind: str = ""):
    """``raw`` as the field's type: that of its default, or for a None default the annotation's
    first type (``bool | None`` -> bool, ``str | None`` -> str, ``int | None`` -> int, else float)."""
    if default is None and kind.startswith(("bool", "str", "int")):
        default = {"b": False, "s": "", "i": 0}[kind[0]]
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float) or default is None:
            return None if raw.lower() == "none" else float(raw)
        return raw
    except ValueError:
        raise UserError(f"bad value {raw!r} for policy option {key!r}") from None


__all__ = ["POLICIES", "Policy", "PromptInfo", "check_supported", "make_policy", "parse_options",
           "parse_spec", "supported"]
