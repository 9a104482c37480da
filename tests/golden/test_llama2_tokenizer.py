"""The embedded LLaMA-2 tokenizer against llama.cpp's reference tokenizations of the real vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaTokenizerFast

from llm_backbones.core.backbones.embedded import ASSETS_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def _reference_vectors() -> list[tuple[str, list[int]]]:
    # Format of llama.cpp's vocab tests: inputs separated by "\n__ggml_vocab_test__\n" (the file ends
    # with one), one line of ids (no BOS) per input.
    inputs = (FIXTURES / "ggml-vocab-llama-spm.gguf.inp").read_text(encoding="utf-8")
    outputs = (FIXTURES / "ggml-vocab-llama-spm.gguf.out").read_text(encoding="utf-8")
    texts = inputs.split("\n__ggml_vocab_test__\n")[:-1]
    ids = [[int(t) for t in line.split()] for line in outputs.split("\n")[: len(texts)]]
    return list(zip(texts, ids, strict=True))


VECTORS = _reference_vectors()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS_DIR / "llama2-tiny")


def test_reference_file_has_46_vectors() -> None:
    assert len(VECTORS) == 46


@pytest.mark.parametrize(("text", "expected"), VECTORS, ids=[f"v{i:02d}" for i in range(len(VECTORS))])
def test_reproduces_llama_cpp_reference(tokenizer, text: str, expected: list[int]) -> None:
    assert tokenizer(text, add_special_tokens=False).input_ids == expected


def test_bos_contract(tokenizer) -> None:
    assert tokenizer("Test 123").input_ids == [1, 4321, 29871, 29896, 29906, 29941]
    assert tokenizer("Test 123", add_special_tokens=False).input_ids == [4321, 29871, 29896, 29906, 29941]


def test_special_tokens_and_size(tokenizer) -> None:
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<unk>", 0)
    assert tokenizer.pad_token is None
    assert len(tokenizer) == 32000


def test_leading_space_keeps_its_piece(tokenizer) -> None:
    # The case gguf-derived tokenizers get wrong: " Hello" must start with the lone "▁" (29871).
    assert tokenizer(" Hello world", add_special_tokens=False).input_ids == [29871, 15043, 3186]


def test_decode_round_trip(tokenizer) -> None:
    text = "In: What action should the robot take to pick up the cup?\nOut: "
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_backbone_keeps_the_original_pipeline_of_a_hub_style_checkpoint(tmp_path, tiny_llama_dir) -> None:
    # Hub Llama-2 repos name `LlamaTokenizer` in tokenizer_config.json; transformers 5's LlamaTokenizer
    # then replaces tokenizer.json's pipeline with a Metaspace one. The backbone must still reproduce the
    # original tokenizer (all 46 vectors), as transformers 4 loaded it for OpenVLA.
    import json
    import shutil

    from transformers import AutoTokenizer as Auto

    from llm_backbones import get_llm_backbone_and_tokenizer

    hub_style = tmp_path / "hub-style"
    shutil.copytree(tiny_llama_dir, hub_style)
    config = json.loads((hub_style / "tokenizer_config.json").read_text())
    (hub_style / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "LlamaTokenizer"})
    )
    rebuilt = Auto.from_pretrained(hub_style)
    assert sum(rebuilt(t, add_special_tokens=False).input_ids == ids for t, ids in VECTORS) == 31
    _, tokenizer = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=hub_style)
    assert all(tokenizer(t, add_special_tokens=False).input_ids == ids for t, ids in VECTORS)
    assert tokenizer.pad_token_id == 32000 and tokenizer("Test 123").input_ids[0] == 1
    assert isinstance(tokenizer, LlamaTokenizerFast)


@pytest.mark.parametrize("backbone_id", ["llama2-tiny-pure", "llama2-7b-chat", "vicuna-v15-7b"])
def test_llama_family_tokenizer_is_llama_tokenizer_fast_with_the_original_pipeline(
    tiny_llama_dir, backbone_id
) -> None:
    # OpenVLA's predict_action: `if isinstance(tokenizer, LlamaTokenizerFast): ... else: raise ValueError`
    import copy
    import pickle

    from llm_backbones import get_llm_backbone_and_tokenizer

    path = None if backbone_id == "llama2-tiny-pure" else tiny_llama_dir
    _, tokenizer = get_llm_backbone_and_tokenizer(backbone_id, model_path=path, inference_mode=True)
    assert isinstance(tokenizer, LlamaTokenizerFast)
    assert (
        type(tokenizer).__name__ == "LlamaTokenizer"
    )  # transformers 5: LlamaTokenizerFast is LlamaTokenizer
    assert all(tokenizer(t, add_special_tokens=False).input_ids == ids for t, ids in VECTORS)
    assert tokenizer(" Hello world").input_ids == [1, 29871, 15043, 3186]
    assert (tokenizer.padding_side, tokenizer.pad_token_id, len(tokenizer)) == ("right", 32000, 32001)
    for clone in (copy.deepcopy(tokenizer), pickle.loads(pickle.dumps(tokenizer))):
        assert isinstance(clone, LlamaTokenizerFast)
        assert clone(" Hello world").input_ids == [1, 29871, 15043, 3186]


def test_mistral_tokenizer_is_llama_tokenizer_fast(tiny_family_model) -> None:
    from llm_backbones import get_llm_backbone_and_tokenizer

    path = tiny_family_model("mistral")
    _, tokenizer = get_llm_backbone_and_tokenizer(
        "mistral-v0.1-7b-pure", model_path=path, inference_mode=True
    )
    assert isinstance(tokenizer, LlamaTokenizerFast)
    assert tokenizer("ab").input_ids[0] == 1  # BOS, from the stand-in's tokenizer.json as written
