"""Hugging Face GPT-2 checkpoints <-> `models.GPT`.

A checkpoint directory holds `config.json` and the weights as `model.safetensors`, a
sharded `model.safetensors.index.json`, or `pytorch_model.bin` (read with
`torch.load(weights_only=True)` only when no safetensors file exists). Hugging Face's
Conv1D layers (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) store weights
`[in, out]`; ours are `nn.Linear` `[out, in]`, so those are transposed on the way in and out.
The attention-mask buffers `attn.bias` / `attn.masked_bias` are not weights and are skipped.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from .atomic import atomic_write
from .config import GPTConfig
from .errors import CheckpointError
from .gpt import GPT

# The small world model shipped inside the package (see the README's model card).
DEFAULT_MODEL_DIR = Path(__file__).parent / "default"

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MASK_BUFFER_NAMES = ("bias", "masked_bias")  # as `h.N.attn.<name>`; not `attn.c_attn.bias`


def _is_mask_buffer(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] == "attn" and parts[-1] in MASK_BUFFER_NAMES


def _read_config(directory: Path) -> GPTConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"missing {CONFIG_NAME} in checkpoint directory {directory}")
    try:
        hf = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return GPTConfig.from_hf_dict(hf)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / SAFETENSORS_NAME).is_file():
        return _read_safetensors(directory / SAFETENSORS_NAME)
    index_path = directory / SAFETENSORS_INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read shard index {index_path}: {exc}") from exc
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.is_file():
                raise CheckpointError(f"missing shard file {shard_path} named in {index_path.name}")
            state.update(_read_safetensors(shard_path))
        return state
    if (directory / BIN_NAME).is_file():
        return _read_weights_bin(directory / BIN_NAME)
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {BIN_NAME}"
    )


def _to_our_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in hf_state.items():
        if _is_mask_buffer(name):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # a bare GPT2Model checkpoint
        state[name] = tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
    return state


def load_pretrained(
    path: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> GPT:
    """Build a `GPT` from a local Hugging Face GPT-2 checkpoint directory (None: the small
    model shipped in the package, `DEFAULT_MODEL_DIR`).

    `dtype` defaults to float32 and `device` to the CPU. Raises `CheckpointError` naming the
    file or key at fault.
    """
    directory = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    config = _read_config(directory)
    state = _to_our_layout(_read_weights(directory))
    if config.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, state.get("transformer.wte.weight", head)):
            raise CheckpointError("config ties lm_head.weight to transformer.wte.weight but they differ")

    with _no_weight_init(), torch.device("meta"):
        model = GPT(config)
    expected = {name: p for name, p in model.named_parameters()}  # tied head appears once
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"missing key {missing[0]} in checkpoint {directory}" + _more(missing))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"unexpected key {unexpected[0]} in checkpoint {directory}" + _more(unexpected))
    for name, param in expected.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise CheckpointError(
                f"shape mismatch for {name}: checkpoint has {tuple(state[name].shape)}, "
                f"config implies {tuple(param.shape)}"
            )
        if not state[name].is_floating_point():
            raise CheckpointError(f"weight {name} has non-float dtype {state[name].dtype}")

    dtype = dtype or torch.float32
    model.load_state_dict(
        {name: state[name].to(dtype).contiguous() for name in expected}, strict=False, assign=True
    )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    return model.to(device or "cpu").eval()


@contextmanager
def _no_weight_init() -> Iterator[None]:
    """Build modules without drawing initial weights (as transformers' `no_init_weights`):
    the checkpoint replaces them, and a random init on the meta device imports
    torch._dynamo, about 1 s of every CLI start."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights in Hugging Face GPT-2 layout (Conv1D weights `[in, out]`)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        tensor = tensor.detach().to("cpu")
        state[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous()
    return state


def save_pretrained(model: GPT, path: str | os.PathLike) -> Path:
    """Write `config.json` and `model.safetensors` that both `load_pretrained` and
    `transformers.GPT2LMHeadModel.from_pretrained` read."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model)
    atomic_write(directory / SAFETENSORS_NAME, save_safetensors(state, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, (json.dumps(model.config.to_hf_dict(), indent=2) + "\n").encode())
    return directory


def convert_bin_to_safetensors(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `model.safetensors` beside a `pytorch_model.bin`, same keys and layout minus
    the attention-mask buffers. The result is checked to load before it is kept."""
    directory = Path(path)
    source = directory / BIN_NAME
    target = directory / SAFETENSORS_NAME
    if not source.is_file():
        raise CheckpointError(f"missing {BIN_NAME} in {directory}")
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists (pass overwrite to replace it)")
    _read_config(directory)
    hf_state = _read_weights_bin(source)
    state = {k: v.contiguous() for k, v in hf_state.items() if not _is_mask_buffer(k)}
    # Tied checkpoints may hold the same storage under two names; safetensors refuses shared tensors.
    seen: dict[int, str] = {}
    for name in list(state):
        ptr = state[name].data_ptr()
        if ptr in seen:
            state[name] = state[name].clone()
        seen[ptr] = name
    atomic_write(target, save_safetensors(state, metadata={"format": "pt"}))
    return target


def _read_weights_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad or unsafe pickle
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
