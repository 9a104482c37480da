"""Small compatibility items: writes to the registry views, BackboneSpec copies, OpenVLA's action
un-normalization."""

from __future__ import annotations

import copy
import pickle
from types import MappingProxyType

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM, MistralForCausalLM

from llm_backbones import LLAMA2_MODELS, MISTRAL_MODELS, get_spec, registered_ids
from llm_backbones.errors import ActionError, NormStatsError, RegistryError
from llm_backbones.persistence.openvla import (
    PRISMATIC_MODEL_LLMS,
    check_unnorm_key,
    get_action_stats,
    unnormalize_actions,
)

# === Registry views are read-only, and say how to register ===


def test_writing_llama2_models_names_register_backbone() -> None:
    entry = {"llm_family": "llama2", "llm_cls": LlamaForCausalLM, "hf_hub_path": "me/my-llama-7b"}
    with pytest.raises(RegistryError) as info:
        LLAMA2_MODELS["my-llama-7b"] = entry
    message = str(info.value)
    for part in (
        "LLAMA2_MODELS",
        "'my-llama-7b'",
        "register_backbone",
        "backbone_id='my-llama-7b'",
        "llm_family='llama2'",
        "hf_hub_path='me/my-llama-7b'",
        "llm_cls=LlamaForCausalLM",
        "layer_cls='transformers.models.llama.modeling_llama.LlamaDecoderLayer'",
        "prompt_format=",
    ):
        assert part in message, part
    assert "my-llama-7b" not in registered_ids()
    assert isinstance(info.value, TypeError)  # what item assignment on the old read-only view raised


def test_writing_another_family_view_names_its_family() -> None:
    with pytest.raises(
        RegistryError, match=r"MISTRAL_MODELS.*llm_family='mistral'.*llm_cls=MistralForCausalLM"
    ):
        MISTRAL_MODELS["my-mistral"] = {"hf_hub_path": "me/m", "llm_cls": MistralForCausalLM}


def test_deleting_from_a_view_is_refused() -> None:
    with pytest.raises(RegistryError, match=r"del LLAMA2_MODELS\['llama2-7b-pure'\].*overwrite=True"):
        del LLAMA2_MODELS["llama2-7b-pure"]
    assert LLAMA2_MODELS["llama2-7b-pure"]["hf_hub_path"] == "meta-llama/Llama-2-7b-hf"


def test_writing_llm_backbones_names_register_backbone() -> None:
    from llm_backbones import LLM_BACKBONES

    entry = {"llm_family": "llama2", "llm_cls": LlamaForCausalLM, "hf_hub_path": "me/my-llama-7b"}
    with pytest.raises(RegistryError, match=r"LLM_BACKBONES\['my-llama-7b'\].*register_backbone"):
        LLM_BACKBONES["my-llama-7b"] = entry
    with pytest.raises(RegistryError, match=r"del LLM_BACKBONES\['llama2-7b-pure'\]"):
        del LLM_BACKBONES["llama2-7b-pure"]
    assert "my-llama-7b" not in registered_ids() and "llama2-7b-pure" in LLM_BACKBONES


# === BackboneSpec: an immutable value ===


def test_spec_deepcopy_is_the_same_value() -> None:
    spec = get_spec("llama2-7b-pure")
    assert copy.deepcopy(spec) is spec


def test_spec_pickles_with_a_read_only_arch() -> None:
    spec = get_spec("llama2-7b-pure")
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again is not spec
    assert isinstance(again.arch, MappingProxyType) and again.arch["hidden_size"] == 4096


# === OpenVLA's un-normalization ===
ONE = {"bridge_orig": {"action": {"q01": [-0.5, 0.0], "q99": [0.5, 2.0], "mask": [True, False]}}}
TWO = {
    "bridge_orig": ONE["bridge_orig"],
    "fractal20220817_data": {"action": {"q01": [0.0, -1.0], "q99": [1.0, 1.0]}},
}


def test_unnormalize_applies_q01_q99_where_masked() -> None:
    # 0.5 * (a + 1) * (q99 - q01) + q01 on dimension 0; dimension 1 (mask false) unchanged.
    got = unnormalize_actions([[-1.0, -1.0], [0.0, 0.25], [1.0, 1.0]], ONE)
    np.testing.assert_allclose(got, [[-0.5, -1.0], [0.0, 0.25], [0.5, 1.0]], rtol=0, atol=1e-15)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64


def test_unnormalize_without_mask_changes_every_dimension() -> None:
    got = unnormalize_actions(torch.tensor([0.5, -0.5], dtype=torch.float64), TWO, "fractal20220817_data")
    np.testing.assert_allclose(got, [0.75, -0.5], rtol=0, atol=1e-15)


def test_mask_of_zeros_and_ones_reads_as_booleans() -> None:
    stats = {"d": {"action": {"q01": [0.0, 0.0], "q99": [2.0, 2.0], "mask": [1, 0]}}}
    np.testing.assert_allclose(unnormalize_actions([0.0, 0.0], stats), [1.0, 0.0], rtol=0, atol=0)


def test_unnorm_key_none_needs_exactly_one_dataset() -> None:
    assert check_unnorm_key(ONE, None) == "bridge_orig"
    with pytest.raises(NormStatsError, match=r"2 datasets.*'bridge_orig', 'fractal20220817_data'"):
        unnormalize_actions([0.0, 0.0], TWO)


def test_unknown_unnorm_key_names_the_known_ones() -> None:
    known = r"'bridge'.*Closest: bridge_orig.*'bridge_orig', 'fractal20220817_data'"
    with pytest.raises(NormStatsError, match=known):
        unnormalize_actions([0.0, 0.0], TWO, "bridge")
    with pytest.raises(KeyError):  # a KeyError too, as a dataset lookup
        get_action_stats(TWO, "bridge")


def test_missing_statistics() -> None:
    with pytest.raises(NormStatsError, match="No action statistics"):
        unnormalize_actions([0.0], {})
    with pytest.raises(NormStatsError, match=r"no action statistics with q01 and q99 \(found \['q01'\]\)"):
        unnormalize_actions([0.0], {"d": {"action": {"q01": [0.0]}}})


def test_action_size_must_match_the_statistics() -> None:
    with pytest.raises(ActionError, match=r"shape \(3,\).*2 dimensions"):
        unnormalize_actions([0.0, 0.0, 0.0], ONE)


# === Prismatic model ids (prismatic/conf/models.py) -> LLM ids ===


def test_prismatic_model_llms() -> None:
    assert PRISMATIC_MODEL_LLMS["prism-dinosiglip-224px+7b"] == "llama2-7b-pure"  # OpenVLA's base VLM
    assert PRISMATIC_MODEL_LLMS["siglip-224px+7b"] == "vicuna-v15-7b"
    assert PRISMATIC_MODEL_LLMS["prism-dinosiglip+13b"] == "llama2-13b-pure"
    assert PRISMATIC_MODEL_LLMS["mistral-instruct-v0.1+7b"] == "mistral-v0.1-7b-instruct"
    assert PRISMATIC_MODEL_LLMS["phi-2+3b"] == "phi-2-3b"
    assert len(PRISMATIC_MODEL_LLMS) == 50
    assert set(PRISMATIC_MODEL_LLMS.values()) <= set(registered_ids())
