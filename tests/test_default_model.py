"""The shipped default world model loads and is the one the model card describes."""
from __future__ import annotations

import re
from pathlib import Path

from models import DEFAULT_MODEL_DIR, fingerprint, load_pretrained

ROOT = Path(__file__).resolve().parent.parent
CARDS = (ROOT / "MODEL_CARD.md", ROOT / "README.md")  # the full card and the README's short one
MAX_SHIPPED_BYTES = 20 * 1024 * 1024


def _card_fingerprint(card: Path) -> str:
    match = re.search(r"Fingerprint[^\n]*?`([0-9a-f]{64})`", card.read_text())
    assert match, f"no 'Fingerprint ... `<sha256>`' line in {card}"
    return match.group(1)


def test_default_model_matches_the_model_card() -> None:
    model = load_pretrained(DEFAULT_MODEL_DIR)

    assert all(fingerprint(model) == _card_fingerprint(card) for card in CARDS)
    assert model.config.vocab_size == 1025 and model.config.frame_tokens == 128
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= MAX_SHIPPED_BYTES
