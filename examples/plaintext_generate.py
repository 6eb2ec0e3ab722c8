"""Plaintext generation through the library API (the reference path the MPC run is checked against).

    .venv/bin/python examples/plaintext_generate.py "What is secure two-party computation?"
"""

import sys

from mpcache.core.backend import PlainBackend
from mpcache.generation.generate import generate
from mpcache.models import Transformer, load_model


def main() -> None:
    prompt = " ".join(sys.argv[1:]) or "What is secure two-party computation?"
    model = load_model("smollm2")
    transformer = Transformer(model.config, model.weights, PlainBackend())
    ids = model.tokenizer.encode(prompt, chat=True)
    result = generate(transformer, ids, max_new_tokens=64, eos_ids=model.tokenizer.eos_token_ids)
    print(model.tokenizer.decode(result.new_ids))
    print(f"[{len(ids)} prompt tokens, prefill {result.prefill_seconds:.2f} s, "
          f"{len(result.new_ids)} new tokens in {result.decode_seconds:.2f} s]")


if __name__ == "__main__":
    main()
