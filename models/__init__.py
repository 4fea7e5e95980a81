"""The commaVQ world model: configuration, the reference PyTorch model, checkpoints."""
from .checkpoint import DEFAULT_MODEL_DIR, convert_bin_to_safetensors, hf_state_dict, load_pretrained, save_pretrained
from .config import GPTConfig
from .errors import CheckpointError, DataError
from .fingerprint import fingerprint
from .gpt import GPT

__all__ = [
    "DEFAULT_MODEL_DIR",
    "GPT",
    "GPTConfig",
    "CheckpointError",
    "DataError",
    "load_pretrained",
    "save_pretrained",
    "hf_state_dict",
    "convert_bin_to_safetensors",
    "fingerprint",
]
