"""`backbone_info` works offline for every id, and its computed size agrees with the model card."""

from __future__ import annotations

import pytest

from llm_backbones.app.info import backbone_info
from llm_backbones.core.registry import get_spec, registered_ids


def card_size(text: str) -> float:
    unit = {"B": 1e9, "M": 1e6}[text[-1]]
    return float(text[:-1]) * unit


@pytest.mark.slow  # every id's full-size config counted on the meta device: ~2-4 s each
@pytest.mark.parametrize("backbone_id", registered_ids())
def test_every_id_offline_and_consistent_with_its_card(backbone_id) -> None:
    facts = backbone_info(backbone_id)
    spec = get_spec(backbone_id)
    # two independent records: the architecture facts (counted on the meta device) and the card's size
    assert facts["parameters"] == pytest.approx(card_size(spec.parameters), rel=0.02)
    assert facts["embedding_rows_after"] % 64 == 0
    assert (
        0
        < facts["trainable_by_mode"]["lora"]
        < facts["trainable_by_mode"]["last-layer"]
        < facts["parameters"]
    )
    assert facts["pad_token_id"] is not None


# === --model-path reads the tokenizer a backbone would ===
def test_model_path_tokenizer_is_loaded_as_a_backbone_loads_it(tmp_path, monkeypatch) -> None:
    # LLaMA-2 loads tokenizer.json as written (`loading.load_tokenizer`); an info that called AutoTokenizer
    # itself would not see the token the spy adds, and would report 32000 tokens.
    import shutil

    from llm_backbones.core.backbones import loading
    from llm_backbones.core.backbones.embedded import ASSETS_DIR

    path = tmp_path / "llama2"
    shutil.copytree(ASSETS_DIR / "llama2-tiny", path)
    real, calls = loading.load_tokenizer, []

    def spy(spec, source, *, local, **kwargs):
        calls.append((spec.backbone_id, str(source), local))
        tokenizer = real(spec, source, local=local, **kwargs)
        tokenizer.add_tokens(["<spy>"])
        return tokenizer

    monkeypatch.setattr(loading, "load_tokenizer", spy)
    facts = backbone_info("llama2-7b-pure", model_path=path)
    assert calls == [("llama2-7b-pure", str(path), True)]
    assert facts["vocab_before_pad"] == 32001 and facts["pad_token_id"] == 32001


def test_model_path_facts_equal_the_backbone_built_from_it() -> None:
    from llm_backbones import get_llm_backbone_and_tokenizer
    from llm_backbones.core.backbones.embedded import embedded_model_dir

    path = embedded_model_dir("llama2-tiny")
    facts = backbone_info("llama2-tiny-pure", model_path=path)
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", model_path=path)
    assert facts["vocab_after_pad"] == len(tokenizer) == 32001
    assert facts["pad_token_id"] == tokenizer.pad_token_id == 32000
    assert (facts["bos_token_id"], facts["eos_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert facts["embedding_rows_after"] == backbone.llm.get_input_embeddings().weight.shape[0] == 32064


def test_model_path_with_a_broken_tokenizer_is_refused_as_a_backbone_refuses_it(tmp_path) -> None:
    import shutil

    from llm_backbones.core.backbones.embedded import ASSETS_DIR
    from llm_backbones.errors import TokenizerFileError

    path = tmp_path / "broken"
    shutil.copytree(ASSETS_DIR / "llama2-tiny", path)
    (path / "tokenizer.json").write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="holds a JSON list, not an object"):
        backbone_info("llama2-7b-pure", model_path=path)
