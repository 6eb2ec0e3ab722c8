import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without CUDA the Triton kernels run in the interpreter; triton reads this when a kernel is decorated.
if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2():
    """The real bundled model (converted once into the user cache)."""
    from mpcache.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny():
    from mpcache.models import load_model

    return load_model("random:tiny")
