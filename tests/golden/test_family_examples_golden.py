"""Golden training examples of the newer families over their real (converted) tokenizers.

One exchange, "What is in the image?" -> "A red cube.", per format. The ids were read once from the raw
tokenizer over the rendered string (pieces listed beside them); the supervised span is the reply and the
token(s) that end it. They pin what the kept trailing newline means in tokens: the generation prompt of
Llama-3 ends with "ĊĊ" (271) and Qwen2.5's with "Ċ" (198) — exactly the training sequence's prefix — while
Phi-3's chat tokens swallow the newline after them (rstrip), as its real tokenizer does.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from family_assets import write_converted_tokenizer
from llm_backbones import (
    Llama3InstructPromptBuilder,
    Llama3PurePromptBuilder,
    Phi35InstructPromptBuilder,
    Qwen25InstructPromptBuilder,
)
from llm_backbones.data.examples import IGNORE_INDEX, tokenize_conversation, tokenize_prompt

CONVERSATION = [{"from": "human", "value": "What is in the image?"}, {"from": "gpt", "value": "A red cube."}]

GOLDEN = {
    # <|begin_of_text|> <|start_header_id|> system <|end_header_id|> ĊĊ Cut ting ĠKnowledge ĠDate : ĠDecember
    # Ġ 202 3 Ċ Today ĠDate : Ġ 26 ĠJul Ġ 202 4 ĊĊ <|eot_id|> <|start_header_id|> user <|end_header_id|> ĊĊ
    # What Ġis Ġin Ġthe Ġimage ? <|eot_id|> <|start_header_id|> assistant <|end_header_id|> ĊĊ | A Ġred Ġcube
    # . <|eot_id|>
    "llama3-instruct": (
        "llama3",
        Llama3InstructPromptBuilder,
        [
            128000,
            128006,
            9125,
            128007,
            271,
            38766,
            1303,
            33025,
            2696,
            25,
            6790,
            220,
            2366,
            18,
            198,
            15724,
            2696,
            25,
            220,
            1627,
            10263,
            220,
            2366,
            19,
            271,
            128009,
            128006,
            882,
            128007,
            271,
            3923,
            374,
            304,
            279,
            2217,
            30,
            128009,
            128006,
            78191,
            128007,
            271,
            32,
            2579,
            24671,
            13,
            128009,
        ],
        41,
    ),
    # <|begin_of_text|> In : ĠWhat Ġis Ġin Ġthe Ġimage ?Ċ Out : | ĠA Ġred Ġcube . <|end_of_text|>
    "llama3-pure": (
        "llama3",
        Llama3PurePromptBuilder,
        [128000, 644, 25, 3639, 374, 304, 279, 2217, 5380, 2729, 25, 362, 2579, 24671, 13, 128001],
        11,
    ),
    # <|im_start|> system Ċ You Ġare ĠQ wen , Ġcreated Ġby ĠAlibaba ĠCloud . ĠYou Ġare Ġa Ġhelpful Ġassistant
    # . <|im_end|> Ċ <|im_start|> user Ċ What Ġis Ġin Ġthe Ġimage ? <|im_end|> Ċ <|im_start|> assistant Ċ |
    # A Ġred Ġcube . <|im_end|> Ċ
    "qwen2.5-instruct": (
        "qwen2",
        Qwen25InstructPromptBuilder,
        [
            151644,
            8948,
            198,
            2610,
            525,
            1207,
            16948,
            11,
            3465,
            553,
            54364,
            14817,
            13,
            1446,
            525,
            264,
            10950,
            17847,
            13,
            151645,
            198,
            151644,
            872,
            198,
            3838,
            374,
            304,
            279,
            2168,
            30,
            151645,
            198,
            151644,
            77091,
            198,
            32,
            2518,
            23739,
            13,
            151645,
            198,
        ],
        35,
    ),
    # <|user|> ▁What ▁is ▁in ▁the ▁image ? <|end|> <|assistant|> | ▁A ▁red ▁cube . <|end|>
    "phi3.5-instruct": (
        "phi3",
        Phi35InstructPromptBuilder,
        [32010, 1724, 338, 297, 278, 1967, 29973, 32007, 32001, 319, 2654, 28704, 29889, 32007],
        9,
    ),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {
        n: AutoTokenizer.from_pretrained(write_converted_tokenizer(n, root / n))
        for n in ("llama3", "qwen2", "phi3")
    }


@pytest.mark.parametrize("case", list(GOLDEN))
def test_training_example(tokenizers, case) -> None:
    name, builder, ids, prompt_len = GOLDEN[case]
    example = tokenize_conversation(tokenizers[name], builder, CONVERSATION, model_family="openvla")
    assert example["input_ids"].tolist() == ids
    assert example["labels"].tolist() == [IGNORE_INDEX] * prompt_len + ids[prompt_len:]


@pytest.mark.parametrize("case", list(GOLDEN))
def test_generation_prompt_is_the_golden_prefix(tokenizers, case) -> None:
    name, builder, ids, prompt_len = GOLDEN[case]
    assert (
        tokenize_prompt(tokenizers[name], builder, CONVERSATION[:1], model_family="openvla").tolist()
        == ids[:prompt_len]
    )
