"""Bad model directories are answered with typed errors that name the path and the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.errors import ConfigMismatchError, ModelPathError, TokenizerContractError

pytestmark = pytest.mark.integration


def test_missing_directory(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelPathError, match="is not a directory") as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=missing)
    assert str(missing) in str(info.value) and isinstance(info.value, FileNotFoundError)


def test_directory_without_config(tmp_path) -> None:
    with pytest.raises(ModelPathError, match="no config.json") as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_config_of_another_architecture(tmp_path, tiny_llama_dir) -> None:
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match="is a 'mistral' model") as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tmp_path / "m")
    assert "needs 'llama'" in str(info.value)


def test_tokenizer_breaking_the_bos_policy(tmp_path, tiny_llama_dir) -> None:
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    tok = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    tok["post_processor"] = None  # a tokenizer that adds no BOS, like Phi-2's
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TokenizerContractError, match="does not add BOS") as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tmp_path / "m")
    assert "adds_bos=True" in str(info.value)


def test_reused_pad_token_missing_from_the_tokenizer(tiny_llama_dir) -> None:
    # A Llama-3 id over a LLaMA-2 checkpoint: same architecture, but no <|finetune_right_pad_id|>.
    with pytest.raises(TokenizerContractError) as info:
        get_llm_backbone_and_tokenizer("llama3.2-1b-pure", model_path=tiny_llama_dir)
    msg = str(info.value)
    assert "reuses the reserved token '<|finetune_right_pad_id|>' as PAD" in msg
    assert "32000 tokens" in msg and "pad_policy='add'" in msg


def test_phi_id_over_a_llama_checkpoint_is_a_config_mismatch(tiny_llama_dir) -> None:
    with pytest.raises(ConfigMismatchError, match=r"is a 'llama' model, but backbone 'phi-2-3b' \(phi\) needs 'phi'"):
        get_llm_backbone_and_tokenizer("phi-2-3b", model_path=tiny_llama_dir)
