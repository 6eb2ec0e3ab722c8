"""The one place that makes ``import crypten`` (0.4.1) work on torch 2.x.

crypten 0.4.1's ONNX converter imports ``torch.onnx._internal.registration``, a private torch
module that newer torch releases removed. We never use that converter (``crypten.nn.from_pytorch``),
so registering an empty stand-in module under that name is enough for the rest of CrypTen.
``protocols/__init__.py`` installs the stand-in, so any module of the MPC layer may ``import crypten``
at its top.
"""

from __future__ import annotations

import importlib
import sys
import types

_STANDIN = "torch.onnx._internal.registration"


def install_standin() -> None:
    try:
        importlib.import_module(_STANDIN)
        return
    except ImportError:
        pass
    module = types.ModuleType(_STANDIN)
    module.registry = None  # crypten only binds the name at import time
    module.__doc__ = "Stand-in registered by protocols.ring.compat (crypten's ONNX converter is unused)."
    sys.modules[_STANDIN] = module


def import_crypten() -> types.ModuleType:
    """Import and return the ``crypten`` module, patching torch first when needed."""
    if "crypten" in sys.modules:
        return sys.modules["crypten"]
    install_standin()
    return importlib.import_module("crypten")
