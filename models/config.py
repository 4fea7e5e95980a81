"""Model configuration: a GPT-2 shaped world model over commaVQ frames."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import CheckpointError

# Hugging Face activation names that are GPT-2's tanh approximation of GELU.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of the world model. The defaults are commaVQ's gpt2m.

    A frame is `frame_tokens` image tokens preceded by one BOS token, so the model sees
    `tokens_per_frame = frame_tokens + 1` positions per frame and its learned absolute
    positions cover `frames_per_window` whole frames. BOS is the last vocabulary entry.
    """

    vocab_size: int = 1025
    frame_tokens: int = 128
    n_positions: int = 2580
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    n_inner: int = 4096
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        positive = ("vocab_size", "frame_tokens", "n_positions", "n_layer", "n_head", "n_embd", "n_inner")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"config value {name}={value!r} must be a positive integer")
        if self.vocab_size < 2:
            raise CheckpointError(f"config value vocab_size={self.vocab_size} leaves no room for BOS")
        if self.n_embd % self.n_head:
            raise CheckpointError(f"config value n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_positions % self.tokens_per_frame:
            raise CheckpointError(
                f"config value n_positions={self.n_positions} is not a whole number of "
                f"{self.tokens_per_frame}-token frames (frame_tokens={self.frame_tokens} plus BOS)"
            )
        if self.activation not in TANH_GELU_NAMES:
            raise CheckpointError(
                f"unsupported activation {self.activation!r}: only tanh GELU ({', '.join(TANH_GELU_NAMES)})"
            )
        if not self.layer_norm_epsilon > 0:
            raise CheckpointError(f"config value layer_norm_epsilon={self.layer_norm_epsilon} must be positive")

    @property
    def bos_token_id(self) -> int:
        return self.vocab_size - 1

    @property
    def tokens_per_frame(self) -> int:
        return self.frame_tokens + 1

    @property
    def frames_per_window(self) -> int:
        return self.n_positions // self.tokens_per_frame

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- Hugging Face GPT2Config <-> GPTConfig -------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` that `transformers.GPT2LMHeadModel` loads unchanged."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "tie_word_embeddings": self.tie_word_embeddings,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "bos_token_id": None,
            "eos_token_id": None,
            # Not a GPT2Config field; transformers keeps unknown keys as attributes.
            "commavq_frame_tokens": self.frame_tokens,
        }

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> GPTConfig:
        """Read a Hugging Face GPT-2 `config.json`, refusing features this model lacks."""
        if hf.get("model_type", "gpt2") != "gpt2":
            raise CheckpointError(f"unsupported model_type {hf.get('model_type')!r}: expected 'gpt2'")
        unsupported = {
            "add_cross_attention": False,
            "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True,
        }
        for key, expected in unsupported.items():
            if key in hf and hf[key] != expected:
                raise CheckpointError(f"unsupported config value {key}={hf[key]!r}: expected {expected!r}")
        n_embd = hf.get("n_embd", 768)
        n_inner = hf.get("n_inner") or 4 * n_embd
        return cls(
            vocab_size=hf.get("vocab_size", 50257),
            frame_tokens=hf.get("commavq_frame_tokens", 128),
            n_positions=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            n_inner=n_inner,
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
            activation=hf.get("activation_function", "gelu_new"),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
