"""MPCache: private LLM inference with secure two-party computation and KV-cache eviction."""

__version__ = "0.1.0"
