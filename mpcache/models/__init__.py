"""Models: loading (bundled SmolLM2, HF folders, random presets) and the transformer."""

from mpcache.models.config import ModelConfig
from mpcache.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from mpcache.models.transformer import Transformer

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelConfig", "Transformer", "load_model"]
