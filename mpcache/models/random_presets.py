"""Random-weight models of named shapes (``random:<preset>``), for fast tests and benchmarks."""

from __future__ import annotations

import torch

from mpcache.models.config import ModelConfig, expected_shapes

PRESETS: dict[str, ModelConfig] = {
    # 2 layers, GQA (4 query heads over 2 KV heads): the fast model for CI.
    "tiny": ModelConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, max_positions=4096, rope_theta=10000.0,
        bos_token_id=256, eos_token_ids=(257,),
    ),
    # Deeper tiny model: enough layers for cross-layer sharing patterns.
    "small": ModelConfig(
        vocab_size=320, hidden_size=128, intermediate_size=256, num_layers=8, num_heads=4,
        num_kv_heads=2, head_dim=32, max_positions=8192, rope_theta=10000.0,
        bos_token_id=256, eos_token_ids=(257,),
    ),
    # SmolLM2-135M's shape, for cost benchmarks without the real weights.
    "smollm2": ModelConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, max_positions=8192, rope_theta=100000.0,
        tie_embeddings=True, bos_token_id=256, eos_token_ids=(257,),
    ),
}


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights with unit-scale activations (std 1/sqrt(fan_in)), HF names and layout."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:  # norm gains around 1
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name == "model.embed_tokens.weight":
            weights[name] = torch.randn(shape, generator=gen)
        else:
            weights[name] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
    return weights
