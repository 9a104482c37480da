"""The converted tokenizers of the newer families against llama.cpp's reference tokenizations.

Each tokenizer (tests/golden/fixtures/tokenizers, see PROVENANCE.md) must reproduce all 46 reference
vectors that llama.cpp ships beside its vocabulary; special-token ids and chat-token tokenizations are
written out below (read off the models' own tokenizer configs and the converted files once).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from family_assets import write_converted_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
INPUTS = (
    (FIXTURES / "ggml-vocab-llama-spm.gguf.inp")
    .read_text(encoding="utf-8")
    .split("\n__ggml_vocab_test__\n")[:-1]
)
REFERENCE = {"llama3": "llama-bpe", "qwen2": "qwen2", "phi3": "phi-3", "gpt2": "gpt-2"}


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    lines = (FIXTURES / f"ggml-vocab-{REFERENCE[name]}.gguf.out").read_text(encoding="utf-8").split("\n")
    return [
        (text, [int(t) for t in line.split()])
        for text, line in zip(INPUTS, lines[: len(INPUTS)], strict=True)
    ]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_tokenizers")
    return {
        name: AutoTokenizer.from_pretrained(write_converted_tokenizer(name, root / name))
        for name in REFERENCE
    }


VECTOR_CASES = [
    pytest.param(name, text, ids, id=f"{name}-v{i:02d}")
    for name in REFERENCE
    for i, (text, ids) in enumerate(_vectors(name))
]


def test_46_reference_vectors_each() -> None:
    assert len(INPUTS) == 46
    assert all(len(_vectors(name)) == 46 for name in REFERENCE)


@pytest.mark.parametrize(("name", "text", "expected"), VECTOR_CASES)
def test_reproduces_llama_cpp_reference(tokenizers, name, text, expected) -> None:
    assert tokenizers[name](text, add_special_tokens=False).input_ids == expected


SPECIALS = {
    # name: (len, bos, eos, pad, {token: id})
    "llama3": (
        128256,
        ("<|begin_of_text|>", 128000),
        ("<|end_of_text|>", 128001),
        None,
        {
            "<|finetune_right_pad_id|>": 128004,
            "<|start_header_id|>": 128006,
            "<|end_header_id|>": 128007,
            "<|eom_id|>": 128008,
            "<|eot_id|>": 128009,
            "<|python_tag|>": 128010,
            "<|reserved_special_token_3|>": 128011,
            "<|reserved_special_token_247|>": 128255,
        },
    ),
    "qwen2": (
        151665,
        None,
        ("<|endoftext|>", 151643),
        ("<|endoftext|>", 151643),
        {
            "<|im_start|>": 151644,
            "<|im_end|>": 151645,
            "<|object_ref_start|>": 151646,
            "<|vision_pad|>": 151654,
            "<tool_call>": 151657,
            "<|file_sep|>": 151664,
        },
    ),
    "phi3": (
        32011,
        ("<s>", 1),
        ("<|endoftext|>", 32000),
        ("<|endoftext|>", 32000),
        {
            "<unk>": 0,
            "</s>": 2,
            "<|assistant|>": 32001,
            "<|system|>": 32006,
            "<|end|>": 32007,
            "<|user|>": 32010,
        },
    ),
    "gpt2": (50257, ("<|endoftext|>", 50256), ("<|endoftext|>", 50256), None, {}),
}


@pytest.mark.parametrize("name", list(SPECIALS))
def test_special_tokens(tokenizers, name) -> None:
    tok = tokenizers[name]
    size, bos, eos, pad, named = SPECIALS[name]
    assert len(tok) == size
    assert ((tok.bos_token, tok.bos_token_id) if tok.bos_token else None) == bos
    assert (tok.eos_token, tok.eos_token_id) == eos
    assert ((tok.pad_token, tok.pad_token_id) if tok.pad_token else None) == pad
    assert {t: tok.convert_tokens_to_ids(t) for t in named} == named


CHAT_TOKENS = [
    pytest.param(
        "llama3",
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        [128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271],
        id="llama3",
    ),
    pytest.param(
        "qwen2",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        [151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198],
        id="qwen2",
    ),
    # Phi-3's chat tokens swallow the newline after them (rstrip), as Microsoft's tokenizer does.
    pytest.param("phi3", "<|user|>\nHi<|end|>\n<|assistant|>\n", [32010, 6324, 32007, 32001], id="phi3"),
    pytest.param(
        "gpt2",
        "Input: Hi\nOutput: ok\n<|endoftext|>",
        [20560, 25, 15902, 198, 26410, 25, 12876, 198, 50256],
        id="gpt2-phi2-format",
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), CHAT_TOKENS)
def test_chat_format_tokens(tokenizers, name, text, expected) -> None:
    assert tokenizers[name](text, add_special_tokens=False).input_ids == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3", [128000, 2323, 220, 4513]),
        ("qwen2", [2271, 220, 16, 17, 18]),
        ("phi3", [4321, 29871, 29896, 29906, 29941]),
        ("gpt2", [14402, 17031]),
    ],
)
def test_bos_policy(tokenizers, name, expected) -> None:
    # Llama 3 adds <|begin_of_text|>; Qwen2.5, Phi-3.5 and Phi-2 add no BOS.
    assert tokenizers[name]("Test 123").input_ids == expected


@pytest.mark.parametrize("name", list(REFERENCE))
def test_decode_round_trip(tokenizers, name) -> None:
    text = "In: What action should the robot take to pick up the cup?\nOut: Déplace 🤖"
    tok = tokenizers[name]
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
