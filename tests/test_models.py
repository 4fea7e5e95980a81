"""The reference model against Hugging Face transformers, checkpoints and fingerprints."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench.hf import import_transformers

import models
from models import CheckpointError, GPTConfig

transformers = import_transformers()

CONFIGS = {
    "tiny-untied": GPTConfig(vocab_size=37, frame_tokens=8, n_positions=27, n_layer=2, n_head=2, n_embd=16, n_inner=40),
    "tiny-tied": GPTConfig(
        vocab_size=21, frame_tokens=4, n_positions=15, n_layer=1, n_head=4, n_embd=32, n_inner=64, tie_word_embeddings=True
    ),
    "gpt2m-fields": GPTConfig(n_layer=2, n_head=4, n_embd=64, n_inner=256),  # vocab 1025, 129-token frames
}


def hf_model(config: GPTConfig, seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config.to_hf_dict())).eval()
    with torch.no_grad():  # GPT-2 initialises biases and LayerNorms trivially; make every weight matter
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return hf


def save_bin(hf: transformers.GPT2LMHeadModel, directory: Path) -> None:
    """The original gpt2m layout: `pytorch_model.bin` with the attention-mask buffers."""
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(hf.state_dict())
    n_pos = hf.config.n_positions
    for i in range(hf.config.n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.bool))[None, None]
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, directory / "pytorch_model.bin")
    hf.config.to_json_file(directory / "config.json")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("form", ["safetensors", "bin"])
def test_logits_match_transformers(name: str, form: str, tmp_path: Path) -> None:
    config = CONFIGS[name]
    hf = hf_model(config)
    if form == "safetensors":
        hf.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
    else:
        save_bin(hf, tmp_path)
    model = models.load_pretrained(tmp_path)
    assert model.config == config
    tokens = torch.randint(0, config.vocab_size, (2, config.n_positions))
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = model(tokens)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_save_pretrained_is_read_by_transformers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = models.GPT(CONFIGS["tiny-untied"]).eval()
    models.save_pretrained(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, 37, (3, 27))
    with torch.no_grad():
        assert (hf(tokens).logits - model(tokens)).abs().max().item() <= 1e-5


def test_sharded_safetensors(tmp_path: Path) -> None:
    hf = hf_model(CONFIGS["gpt2m-fields"])
    hf.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert models.fingerprint(models.load_pretrained(tmp_path)) == models.fingerprint(
        models.load_pretrained(_resave(hf, tmp_path / "single"))
    )


def _resave(hf: transformers.GPT2LMHeadModel, directory: Path) -> Path:
    hf.save_pretrained(directory)
    return directory


def test_dtype_and_device(tmp_path: Path) -> None:
    models.save_pretrained(models.GPT(CONFIGS["tiny-tied"]), tmp_path)
    model = models.load_pretrained(tmp_path, dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    hf = hf_model(CONFIGS["tiny-untied"])
    hf.save_pretrained(tmp_path / "st")
    save_bin(hf, tmp_path / "bin")
    a = models.load_pretrained(tmp_path / "st")
    b = models.load_pretrained(tmp_path / "bin")
    assert models.fingerprint(a) == models.fingerprint(b)
    models.save_pretrained(a, tmp_path / "again")
    assert models.fingerprint(models.load_pretrained(tmp_path / "again")) == models.fingerprint(a)
    reference = models.fingerprint(a)
    for name, param in a.named_parameters():
        with torch.no_grad():
            param.view(-1)[0] += 1e-3
        assert models.fingerprint(a) != reference, name
        with torch.no_grad():
            param.view(-1)[0] -= 1e-3
    assert models.fingerprint(a) == reference


def test_convert_cli(tmp_path: Path) -> None:
    hf = hf_model(CONFIGS["tiny-untied"])
    save_bin(hf, tmp_path)
    before = models.fingerprint(models.load_pretrained(tmp_path))
    run = subprocess.run([sys.executable, "-m", "models", "convert", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "model.safetensors").exists()
    (tmp_path / "pytorch_model.bin").unlink()  # now only the converted file can be read
    assert models.fingerprint(models.load_pretrained(tmp_path)) == before
    again = subprocess.run([sys.executable, "-m", "models", "convert", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "pytorch_model.bin" in again.stderr


# --- failures --------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    models.save_pretrained(models.GPT(CONFIGS["tiny-untied"]), tmp_path)
    return tmp_path


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _edit_weights(directory: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nowhere"):
        models.load_pretrained(tmp_path / "nowhere")


def test_missing_config(checkpoint: Path) -> None:
    (checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        models.load_pretrained(checkpoint)


def test_missing_weights(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        models.load_pretrained(checkpoint)


def test_missing_shard(tmp_path: Path) -> None:
    hf_model(CONFIGS["gpt2m-fields"]).save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=shard):
        models.load_pretrained(tmp_path)


def test_corrupt_weights_file(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        models.load_pretrained(checkpoint)


def test_missing_key(checkpoint: Path) -> None:
    _edit_weights(checkpoint, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"missing key transformer\.h\.1\.mlp\.c_fc\.bias"):
        models.load_pretrained(checkpoint)


def test_missing_untied_head(checkpoint: Path) -> None:
    _edit_weights(checkpoint, lambda s: s.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="missing key lm_head.weight"):
        models.load_pretrained(checkpoint)


def test_unexpected_key(checkpoint: Path) -> None:
    _edit_weights(checkpoint, lambda s: s.update({"transformer.h.2.ln_1.weight": torch.ones(16)}))
    with pytest.raises(CheckpointError, match=r"unexpected key transformer\.h\.2\.ln_1\.weight"):
        models.load_pretrained(checkpoint)


def test_shape_mismatch(checkpoint: Path) -> None:
    _edit_weights(checkpoint, lambda s: s.update({"transformer.wpe.weight": torch.zeros(26, 16)}))
    with pytest.raises(CheckpointError, match=r"shape mismatch for transformer\.wpe\.weight"):
        models.load_pretrained(checkpoint)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"activation_function": "relu"}, "unsupported activation 'relu'"),
        ({"n_head": 3}, "n_embd=16 is not divisible by n_head=3"),
        ({"n_positions": 28}, "n_positions=28 is not a whole number"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"model_type": "llama"}, "model_type"),
        ({"n_layer": 0}, "n_layer=0"),
    ],
)
def test_bad_config_values(checkpoint: Path, changes: dict, message: str) -> None:
    _edit_config(checkpoint, **changes)
    with pytest.raises(CheckpointError, match=message):
        models.load_pretrained(checkpoint)


def test_config_derivations() -> None:
    config = GPTConfig()
    assert (config.bos_token_id, config.tokens_per_frame, config.frames_per_window, config.head_dim) == (1024, 129, 20, 64)
    assert GPTConfig.from_hf_dict(config.to_hf_dict()) == config
