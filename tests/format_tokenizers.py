"""Every prompt format paired with the tokenizer of a family that uses it, for the property tests.

`FORMAT_PAIRS` lists `(format name, tokenizer name)`: each of the 17 formats of `PROMPT_FORMATS` with the
tokenizer of a family whose registry entries render it (a Prismatic twin: the family that loads it with
`prismatic_compat=True`). `family_tokenizer(name)` loads one as the backbone hands it over: through the
same files and loading path as the golden tests (`family_assets.write_tokenizer`, `AutoTokenizer`), with
the family's PAD policy of the registry applied (`BackboneSpec.pad_token`/`pad_policy`).

Tokenizers: LLaMA-2's is the embedded one; Llama 3, Qwen2.5, Phi-3.5 and Phi-2 (GPT-2's BPE, the closest
stand-in for its CodeGen tokenizer) are the committed conversions of llama.cpp's vocabularies. The real
vocabularies of Mistral and Gemma-2 are not available offline (neither is in llama.cpp's files), so
their formats run on the stand-ins of `family_assets` (real special-token ids, text spelt out as single
characters); Mistral's also run on LLaMA-2's tokenizer, the same kind of SentencePiece BPE (byte
fallback, "▁" prepended, <s>=1, </s>=2) with real merges, which can cross a turn boundary.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_backbones import get_spec, registered_ids
from shared import padded_llama2_tokenizer

# format -> the family whose tokenizer it runs on (one that uses the format; checked by the tests).
FORMAT_FAMILY = {
    "pure": "llama2",  # also Mistral's base models'
    "llama2-chat": "llama2",
    "vicuna-v15": "llama2",
    "mistral-instruct": "mistral",
    "phi-2": "phi",
    "pure-llama3": "llama3",
    "pure-qwen2": "qwen2.5",
    "pure-gemma2": "gemma2",
    "llama3-instruct": "llama3",
    "qwen2.5-instruct": "qwen2.5",
    "gemma2-instruct": "gemma2",
    "phi3.5-instruct": "phi3",
    "pure-prismatic": "llama2",
    "llama2-chat-prismatic": "llama2",
    "vicuna-v15-prismatic": "llama2",
    "mistral-instruct-prismatic": "mistral",
    "phi-2-prismatic": "phi",
}
# family -> its tokenizer (a `family_assets.write_tokenizer` name; "llama2": the embedded one)
FAMILY_TOKENIZER = {
    "llama2": "llama2",
    "mistral": "mistral-standin",
    "phi": "gpt2",
    "llama3": "llama3",
    "qwen2.5": "qwen2",
    "gemma2": "gemma2-standin",
    "phi3": "phi3",
}
# The id each tokenized sequence starts with: the BOS the tokenizer adds (Phi-2's format writes its own
# <|endoftext|>); None where the family has no BOS (Qwen2.5, and Phi-3.5 whose tokenizer adds none).
FIRST_ID = {
    "llama2": 1,
    "mistral-standin": 1,
    "gpt2": 50256,
    "llama3": 128000,
    "qwen2": None,
    "gemma2-standin": 2,
    "phi3": None,
}

FORMAT_PAIRS = [(name, FAMILY_TOKENIZER[family]) for name, family in FORMAT_FAMILY.items()] + [
    ("mistral-instruct", "llama2"),
    ("mistral-instruct-prismatic", "llama2"),
]


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}@{pair[1]}"


def family_of(tokenizer_name: str) -> str:
    return next(family for family, name in FAMILY_TOKENIZER.items() if name == tokenizer_name)


@functools.cache
def family_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Tokenizer `name` (a `FAMILY_TOKENIZER` value), with its family's PAD as the backbone sets it."""
    if name == "llama2":
        return padded_llama2_tokenizer()
    from family_assets import write_tokenizer  # imports the model classes too: only when needed

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(write_tokenizer(name, Path(tmp)))
    family = family_of(name)
    spec = get_spec(next(i for i in registered_ids() if get_spec(i).llm_family == family))
    if spec.pad_policy == "reuse":
        tokenizer.pad_token = spec.pad_token
    else:
        tokenizer.add_special_tokens({"pad_token": spec.pad_token})
    return tokenizer


def without_image_markers(message: str) -> str:
    """`message` as the builders clean it before stripping: LLaVA's image markers removed, with the line
    break that sets one apart ("<image>\\n", then "\\n<image>", then "<image>")."""
    for marker in ("<image>\n", "\n<image>", "<image>"):
        message = message.replace(marker, "")
    return message


# Their 128k- and 152k-token vocabularies take seconds to load: `make check`'s fast lane leaves these pairs to
# `make test`, which runs every pair.
SLOW_TOKENIZERS = frozenset({"llama3", "qwen2"})


def format_params() -> list:
    """FORMAT_PAIRS as pytest params named "<format>@<tokenizer>", the slow tokenizers' marked `slow`."""
    return [
        pytest.param(name, tok, id=pair_id((name, tok)), marks=_slow_if(tok in SLOW_TOKENIZERS))
        for name, tok in FORMAT_PAIRS
    ]


def _slow_if(slow: bool) -> list:
    return [pytest.mark.slow] if slow else []


def tokenizer_params(names: list[str]) -> list:
    return [pytest.param(n, id=n, marks=_slow_if(n in SLOW_TOKENIZERS)) for n in names]


def examples(n: int) -> int:
    """Hypothesis examples per property: `n`, or a quarter of it in `make check`'s fast lane
    (LLM_BACKBONES_QUICK=1); `make test` runs every property at full count."""
    return max(10, n // 4) if os.environ.get("LLM_BACKBONES_QUICK") == "1" else n
