"""`backbone_info` works offline for every id, and its computed size agrees with the model card."""

from __future__ import annotations

import pytest

from llm_backbones.app.info import backbone_info
from llm_backbones.core.registry import get_spec, registered_ids


def card_size(text: str) -> float:
    unit = {"B": 1e9, "M": 1e6}[text[-1]]
    return float(text[:-1]) * unit


@pytest.mark.parametrize("backbone_id", registered_ids())
def test_every_id_offline_and_consistent_with_its_card(backbone_id) -> None:
    facts = backbone_info(backbone_id)
    spec = get_spec(backbone_id)
    # two independent records: the architecture facts (counted on the meta device) and the card's size
    assert facts["parameters"] == pytest.approx(card_size(spec.parameters), rel=0.02)
    assert facts["embedding_rows_after"] % 64 == 0
    assert 0 < facts["trainable_by_mode"]["lora"] < facts["trainable_by_mode"]["last-layer"] < facts["parameters"]
    assert facts["pad_token_id"] is not None
