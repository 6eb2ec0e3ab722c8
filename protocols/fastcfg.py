"""CrypTen's config as plain nested dicts: the same values, read at attribute speed.

CrypTen reads ``crypten.cfg`` (an OmegaConf tree) on every tensor it creates; profiled on a
two-party decode step that was ~9% of party 0's time (58k lookups, each through OmegaConf's
node machinery). ``freeze()`` swaps the tree for plain dicts with attribute access after the
settings are made; ``cfg.temp_override`` still works (OmegaConf merges dicts)."""

from __future__ import annotations


class _Node(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _plain(value):
    if isinstance(value, dict):
        return _Node({k: _plain(v) for k, v in value.items()})
    return value


def freeze() -> None:
    from omegaconf import DictConfig, OmegaConf

    from protocols.compat import import_crypten

    cfg = import_crypten().cfg
    if isinstance(cfg.config, DictConfig):
        cfg.set_config(_plain(OmegaConf.to_container(cfg.config, resolve=True)))
