"""Build a Hugging Face LlamaForCausalLM holding exactly our weights: the reference to match."""

import torch


def hf_model(loaded):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = loaded.config.to_hf()
    hf_config.pop("model_type")
    hf_config.pop("architectures")
    model = LlamaForCausalLM(LlamaConfig(**hf_config)).eval()
    missing, unexpected = model.load_state_dict(loaded.weights, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing  # tied to the embedding
    return model


def hf_greedy(model, ids, n, eos_ids=()):
    """HF greedy decoding of up to n tokens, stopping after any of ``eos_ids``."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0,
            eos_token_id=list(eos_ids) or None,
        )
    return out[0, len(ids):].tolist()
