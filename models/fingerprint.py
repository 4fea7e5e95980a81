"""A stable identity for a model: what the compressor stores to refuse the wrong model."""
from __future__ import annotations

import hashlib
import json

import torch

from .gpt import GPT


def fingerprint(model: GPT) -> str:
    """SHA-256 (hex) over the config and every weight's name, dtype, shape and bytes.

    It is independent of the device and of how the checkpoint was stored (safetensors or
    `.bin`), and changes when any weight, the config, or the weights' dtype changes.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # View as bytes so bfloat16 (which numpy lacks) hashes too.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
