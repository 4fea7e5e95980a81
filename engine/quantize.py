"""Weights of the world model as integers: the deterministic load step of exact numerics.

Every projection weight becomes int8 per output channel: scale = max|w| / 127 in float64
(the max is exact in any order; the division of two float64 values is correctly rounded),
w_q = round-half-even(w / scale). A float32 weight is exact in float64, so the same checkpoint
gives the same integers on any machine. Embeddings, biases and LayerNorm parameters stay
float32: a lookup or an elementwise add of them is exact or correctly rounded everywhere.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from models import GPT

from .errors import EngineError

# Bump whenever any rule of exact numerics changes: it is hashed into every fingerprint.
NUMERICS_VERSION = "exact-int8-v1"
QMAX = 127  # symmetric int8 range [-127, 127]: -128 never occurs, so |q| <= 127 everywhere.
# Channels whose max|w| is below this are treated as all zero: keeps every scale, and every
# product of scales, far above float32 denormals (explicit flush, not the hardware's).
TINY = 2.0**-40


@dataclass(frozen=True)
class QuantizedLinear:
    """y = (x_q @ weight.T) * x_scale * scale + bias. weight int8 [out, in], scale float32 [out]."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class QuantizedBlock:
    ln_1: tuple[torch.Tensor, torch.Tensor]
    attn: QuantizedLinear
    proj: QuantizedLinear
    ln_2: tuple[torch.Tensor, torch.Tensor]
    fc: QuantizedLinear
    mlp_proj: QuantizedLinear


@dataclass(frozen=True)
class QuantizedGPT:
    wte: torch.Tensor  # float32 [vocab, n_embd]
    wpe: torch.Tensor  # float32 [n_positions, n_embd]
    blocks: tuple[QuantizedBlock, ...]
    ln_f: tuple[torch.Tensor, torch.Tensor]
    lm_head: QuantizedLinear
    eps: float


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] -> (int8 [out, in], float32 scale [out]), per output channel."""
    if weight.dim() != 2 or not torch.isfinite(weight).all():
        raise EngineError(f"cannot quantize weight of shape {tuple(weight.shape)}: need a finite 2-D tensor")
    w = weight.detach().to(device="cpu", dtype=torch.float32).double()
    peak = w.abs().amax(dim=1)
    zero = peak < TINY
    # Rounded to float32 once, then used in float64 below, so the integers are those of
    # the float32 scale the forward pass multiplies by.
    scale = torch.where(zero, torch.ones_like(peak), peak / QMAX).float()
    q = torch.round(w / scale.double()[:, None]).clamp_(-QMAX, QMAX)  # round: half to even
    q[zero] = 0
    return q.to(torch.int8), torch.where(zero, torch.zeros_like(scale), scale)


def _linear(module: torch.nn.Linear, device: torch.device) -> QuantizedLinear:
    q, scale = quantize_weight(module.weight)
    bias = None if module.bias is None else module.bias.detach().float().to(device)
    return QuantizedLinear(q.to(device), scale.to(device), bias)


def _ln(module: torch.nn.LayerNorm, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return module.weight.detach().float().to(device), module.bias.detach().float().to(device)


def quantize_model(model: GPT, device: torch.device | str = "cpu") -> QuantizedGPT:
    """The integer form of `model`, on `device`; identical integers on any machine."""
    if not isinstance(model, GPT):
        raise EngineError(f"quantize_model needs a models.GPT, got {type(model).__name__}")
    device = torch.device(device)
    t = model.transformer
    blocks = tuple(
        QuantizedBlock(
            ln_1=_ln(b.ln_1, device),
            attn=_linear(b.attn.c_attn, device),
            proj=_linear(b.attn.c_proj, device),
            ln_2=_ln(b.ln_2, device),
            fc=_linear(b.mlp.c_fc, device),
            mlp_proj=_linear(b.mlp.c_proj, device),
        )
        for b in t.h
    )
    return QuantizedGPT(
        wte=t.wte.weight.detach().float().to(device),
        wpe=t.wpe.weight.detach().float().to(device),
        blocks=blocks,
        ln_f=_ln(t.ln_f, device),
        lm_head=_linear(model.lm_head, device),
        eps=float(model.config.layer_norm_epsilon),
    )


def quantized_tensors(q: QuantizedGPT) -> list[tuple[str, torch.Tensor]]:
    """Every tensor the exact forward pass computes with, named, in a fixed order."""
    out = [("wte", q.wte), ("wpe", q.wpe)]
    for i, b in enumerate(q.blocks):
        out += [(f"h.{i}.ln_1.weight", b.ln_1[0]), (f"h.{i}.ln_1.bias", b.ln_1[1])]
        out += [(f"h.{i}.ln_2.weight", b.ln_2[0]), (f"h.{i}.ln_2.bias", b.ln_2[1])]
        for name in ("attn", "proj", "fc", "mlp_proj"):
            lin = getattr(b, name)
            out += [(f"h.{i}.{name}.weight", lin.weight), (f"h.{i}.{name}.scale", lin.scale)]
            if lin.bias is not None:
                out.append((f"h.{i}.{name}.bias", lin.bias))
    out += [("ln_f.weight", q.ln_f[0]), ("ln_f.bias", q.ln_f[1])]
    out += [("lm_head.weight", q.lm_head.weight), ("lm_head.scale", q.lm_head.scale)]
    return out


def quantized_fingerprint(q: QuantizedGPT, extra: bytes = b"") -> str:
    """SHA-256 of the numerics version, eps, every integer/scale/float tensor used, and
    `extra` (the lookup tables): two runners with equal fingerprints compute equal bits."""
    h = hashlib.sha256(NUMERICS_VERSION.encode())
    h.update(repr(q.eps).encode())
    for name, tensor in quantized_tensors(q):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(extra)
    return h.hexdigest()
