"""OpenVLA's action tokenizer: ids by OpenVLA's formula (written out here), decoding, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_backbones.data.actions import ActionTokenizer
from shared import padded_llama2_tokenizer


@pytest.fixture(scope="module")
def padded_tokenizer():
    return padded_llama2_tokenizer()


@pytest.fixture(scope="module")
def action_tokenizer(padded_tokenizer):
    return ActionTokenizer(padded_tokenizer)


def openvla_token_id(x: float, bins: int = 256, vocab_size: int = 32000) -> int:
    """OpenVLA's formula, spelled out: clip to [-1, 1], digitize against np.linspace(-1, 1, bins) edges,
    token = vocab_size - bin index."""
    return vocab_size - int(np.digitize(np.clip(x, -1.0, 1.0), np.linspace(-1.0, 1.0, bins)))


def test_ids_of_minus_one_zero_one(action_tokenizer) -> None:
    # -1 is the first edge (b=1); 0 lies in bin 128 (edge 127 = -1/255 <= 0 < edge 128 = 1/255); 1 is the last
    # edge (b=256)
    assert action_tokenizer.encode([-1.0, 0.0, 1.0]).tolist() == [31999, 31872, 31744]
    assert action_tokenizer.encode([-5.0, 5.0]).tolist() == [31999, 31744]  # clipped


def test_token_range_and_begin_idx(action_tokenizer) -> None:
    assert action_tokenizer.token_id_range == (31744, 31999)
    assert action_tokenizer.action_token_begin_idx == 31743
    assert action_tokenizer.vocab_size == 256


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-3, max_value=3, allow_nan=False),
            st.sampled_from(np.linspace(-1.0, 1.0, 256).tolist()),  # exactly on the edges
        ),
        min_size=1,
        max_size=14,
    )
)
def test_random_actions_match_openvla_formula(action_tokenizer, values) -> None:
    assert action_tokenizer.encode(values).tolist() == [openvla_token_id(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-2, max_value=2, allow_nan=False), min_size=1, max_size=7))
def test_decode_is_within_half_a_bin_of_clipped_action(action_tokenizer, values) -> None:
    decoded = action_tokenizer.decode_token_ids_to_actions(action_tokenizer.encode(values))
    half_bin = (2.0 / 255) / 2
    for v, d in zip(values, decoded.tolist(), strict=True):
        assert abs(d - min(max(v, -1.0), 1.0)) <= half_bin + 1e-12


def test_decode_known_ids(action_tokenizer) -> None:
    # token 31999 -> bin index 0 -> centre (-1 + (-1 + 2/255)) / 2 = -1 + 1/255
    out = action_tokenizer.decode_token_ids_to_actions([31999, 31744]).tolist()
    assert out[0] == pytest.approx(-1 + 1 / 255, abs=1e-12)
    assert out[1] == pytest.approx(1 - 1 / 255, abs=1e-12)


def test_batched_encode_and_text_interface(action_tokenizer, padded_tokenizer) -> None:
    batch = torch.tensor([[-1.0, 0.0, 1.0], [0.5, -0.5, 0.25]])
    ids = action_tokenizer.encode(batch)
    assert ids.shape == (2, 3)
    texts = action_tokenizer(batch)
    assert isinstance(texts, list) and len(texts) == 2
    assert texts[0] == padded_tokenizer.decode([31999, 31872, 31744])


def test_every_action_token_survives_text_round_trip(padded_tokenizer) -> None:
    # OpenVLA puts actions into the reply as text; each action token must tokenize back to itself.
    for token_id in range(31744, 32000):
        text = padded_tokenizer.decode([token_id])
        assert padded_tokenizer(text, add_special_tokens=False).input_ids[-1] == token_id, token_id


# Bad inputs (NaN/inf, shapes, out-of-range ids, construction): tests/unit/test_bad_inputs.py (ACTIONS).
