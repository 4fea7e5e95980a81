"""The shipped default world model loads and is the one the model card describes."""
from __future__ import annotations

import re
from pathlib import Path

from models import DEFAULT_MODEL_DIR, fingerprint, load_pretrained

MODEL_CARD = Path(__file__).resolve().parent.parent / "MODEL_CARD.md"
MAX_SHIPPED_BYTES = 20 * 1024 * 1024


def _card_fingerprint() -> str:
    match = re.search(r"Fingerprint[^\n]*?`([0-9a-f]{64})`", MODEL_CARD.read_text())
    assert match, f"no 'Fingerprint ... `<sha256>`' line in {MODEL_CARD}"
    return match.group(1)


def test_default_model_matches_the_model_card() -> None:
    model = load_pretrained(DEFAULT_MODEL_DIR)

    assert fingerprint(model) == _card_fingerprint()
    assert model.config.vocab_size == 1025 and model.config.frame_tokens == 128
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= MAX_SHIPPED_BYTES
