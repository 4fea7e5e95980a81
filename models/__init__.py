"""The commaVQ world model: configuration, the reference PyTorch model, checkpoints.

The names are imported on first use, so the light submodules (`models.npy`, `models.tokens`,
`models.atomic`, `models.errors`) serve the command lines' checks before torch is loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import DEFAULT_MODEL_DIR, convert_bin_to_safetensors, hf_state_dict, load_pretrained, save_pretrained
    from .config import GPTConfig
    from .errors import CheckpointError, DataError
    from .fingerprint import fingerprint
    from .gpt import GPT

_HOMES = {
    **dict.fromkeys(("DEFAULT_MODEL_DIR", "convert_bin_to_safetensors", "hf_state_dict", "load_pretrained",
                     "save_pretrained"), ".checkpoint"),
    "GPTConfig": ".config",
    **dict.fromkeys(("CheckpointError", "DataError"), ".errors"),
    "fingerprint": ".fingerprint",
    "GPT": ".gpt",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    # Bound here: importing a submodule named like its function (`fingerprint`) has just set
    # this package's attribute to the submodule.
    globals()[name] = value
    return value
