"""Golden prompts of the newer instruct families and of the Pure format over their vocabularies.

Sources the expected strings were written from (read, not copied): the official chat templates of
meta-llama/Llama-3.1-8B-Instruct and Llama-3.2-3B-Instruct, Qwen/Qwen2.5-7B-Instruct,
google/gemma-2-2b-it and microsoft/Phi-3.5-mini-instruct, as llama.cpp keeps them
(`vendor/llama.cpp/models/templates/*.jinja` in the `llama-cpp-python==0.3.36` sdist), rendered the way
HF `apply_chat_template` does (sandboxed Jinja, trim_blocks, lstrip_blocks) with
`add_generation_prompt=True` for a prompt that ends with a human turn and `False` after a reply. Then:
the leading BOS text is removed where the tokenizer adds BOS itself (Llama-3 `<|begin_of_text|>`,
Gemma-2 `<bos>`; Qwen2.5 and Phi-3.5 have none), messages are the builder's cleaned messages (`<image>`
removed, stripped), and the trailing newline of every generation prompt is kept.

Every expected string below is a literal. `test_family_chat_templates.py` renders the .jinja files
themselves over the same conversations when they are present.
"""

from __future__ import annotations

import pytest

from llm_backbones import (
    Gemma2InstructPromptBuilder,
    Gemma2PurePromptBuilder,
    LLaMa2ChatPromptBuilder,
    Llama3InstructPromptBuilder,
    Llama3PurePromptBuilder,
    MistralInstructPromptBuilder,
    Phi35InstructPromptBuilder,
    PhiPromptBuilder,
    PurePromptBuilder,
    Qwen25InstructPromptBuilder,
    Qwen25PurePromptBuilder,
)
from llm_backbones.errors import ConversationError, PromptFormatError

# =====================================================================================================
# Shared conversations
# =====================================================================================================

# A: two exchanges with an `<image>` tag, unicode, whitespace around messages and a double space inside.
CONVERSATION_A = [
    ("human", "<image>\nWhat is in the image?"),
    ("gpt", "A red cube next to a blue bowl."),
    ("human", "  Déplace le cube rouge → à gauche 🤖  "),
    ("gpt", "\tDone:  the cube is on the left.\n"),
]
# B: three short exchanges, with a reply that spans two lines.
CONVERSATION_B = [
    ("user", "Pick up the cup."),
    ("assistant", "Picked up."),
    ("user", "Put it in the sink."),
    ("assistant", "Done.\nIt is in the sink."),
    ("user", "Now wash it."),
    ("assistant", "Washing."),
]
NEXT_MESSAGE = "What next?"
SYSTEM = "You control a robot arm."
DATE = "05 Mar 2026"

# =====================================================================================================
# Llama-3.1 / 3.2 Instruct
# =====================================================================================================

L3_SYS_DEFAULT = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
)
L3_SYS_CUSTOM = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou control a robot arm.<|eot_id|>"
)
L3_SYS_CUSTOM_DATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 05 Mar 2026\n\nYou control a robot arm.<|eot_id|>"
)

LLAMA3_A_DEFAULT = {
    "turns": [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "A red cube next to a blue bowl.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Done:  the cube is on the left.<|eot_id|>",
    ],
    "generation": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red cube next to a blue bowl.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "prompt": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red cube next to a blue bowl.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone:  the cube is on the left.<|eot_id|>"
    ),
    "potential": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red cube next to a blue bowl.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone:  the cube is on the left.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat next?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}

LLAMA3_A_SYSTEM = {
    "turns": [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "A red cube next to a blue bowl.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Done:  the cube is on the left.<|eot_id|>",
    ],
    "generation": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red cube next to a blue bowl.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "prompt": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red cube next to a blue bowl.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone:  the cube is on the left.<|eot_id|>"
    ),
    "potential": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the image?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA red cube next to a blue bowl.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nDéplace le cube rouge → à gauche 🤖<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone:  the cube is on the left.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat next?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}

LLAMA3_B_SYSTEM_DATE = {
    "turns": [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 05 Mar 2026\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPick up the cup.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Picked up.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nPut it in the sink.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Done.\nIt is in the sink.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nNow wash it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Washing.<|eot_id|>",
    ],
    "generation": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 05 Mar 2026\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPick up the cup.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nPicked up.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPut it in the sink.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone.\nIt is in the sink.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nNow wash it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "prompt": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 05 Mar 2026\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPick up the cup.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nPicked up.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPut it in the sink.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone.\nIt is in the sink.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nNow wash it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nWashing.<|eot_id|>"
    ),
    "potential": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 05 Mar 2026\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPick up the cup.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nPicked up.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nPut it in the sink.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nDone.\nIt is in the sink.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nNow wash it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nWashing.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat next?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}

# =====================================================================================================
# Qwen2.5 Instruct (ChatML; Qwen's default system prompt; no BOS)
# =====================================================================================================

QWEN_A_DEFAULT = {
    "turns": [
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n",
        "A red cube next to a blue bowl.<|im_end|>\n",
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n<|im_start|>assistant\n",
        "\tDone:  the cube is on the left.\n<|im_end|>\n",
    ],
    "generation": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cube next to a blue bowl.<|im_end|>\n"
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n<|im_start|>assistant\n"
    ),
    "prompt": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cube next to a blue bowl.<|im_end|>\n"
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n"
        "<|im_start|>assistant\n\tDone:  the cube is on the left.\n<|im_end|>\n"
    ),
    "potential": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cube next to a blue bowl.<|im_end|>\n"
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n"
        "<|im_start|>assistant\n\tDone:  the cube is on the left.\n<|im_end|>\n"
        "<|im_start|>user\nWhat next?<|im_end|>\n<|im_start|>assistant\n"
    ),
}

QWEN_A_SYSTEM = {
    "turns": [
        "<|im_start|>system\nYou control a robot arm.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n",
        "A red cube next to a blue bowl.<|im_end|>\n",
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n<|im_start|>assistant\n",
        "\tDone:  the cube is on the left.\n<|im_end|>\n",
    ],
    "generation": (
        "<|im_start|>system\nYou control a robot arm.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cube next to a blue bowl.<|im_end|>\n"
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n<|im_start|>assistant\n"
    ),
    "prompt": (
        "<|im_start|>system\nYou control a robot arm.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cube next to a blue bowl.<|im_end|>\n"
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n"
        "<|im_start|>assistant\n\tDone:  the cube is on the left.\n<|im_end|>\n"
    ),
    "potential": (
        "<|im_start|>system\nYou control a robot arm.<|im_end|>\n"
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cube next to a blue bowl.<|im_end|>\n"
        "<|im_start|>user\n  Déplace le cube rouge → à gauche 🤖  <|im_end|>\n"
        "<|im_start|>assistant\n\tDone:  the cube is on the left.\n<|im_end|>\n"
        "<|im_start|>user\nWhat next?<|im_end|>\n<|im_start|>assistant\n"
    ),
}

QWEN_B_DEFAULT = {
    "turns": [
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPick up the cup.<|im_end|>\n<|im_start|>assistant\n",
        "Picked up.<|im_end|>\n",
        "<|im_start|>user\nPut it in the sink.<|im_end|>\n<|im_start|>assistant\n",
        "Done.\nIt is in the sink.<|im_end|>\n",
        "<|im_start|>user\nNow wash it.<|im_end|>\n<|im_start|>assistant\n",
        "Washing.<|im_end|>\n",
    ],
    "generation": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPick up the cup.<|im_end|>\n<|im_start|>assistant\nPicked up.<|im_end|>\n"
        "<|im_start|>user\nPut it in the sink.<|im_end|>\n"
        "<|im_start|>assistant\nDone.\nIt is in the sink.<|im_end|>\n"
        "<|im_start|>user\nNow wash it.<|im_end|>\n<|im_start|>assistant\n"
    ),
    "prompt": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPick up the cup.<|im_end|>\n<|im_start|>assistant\nPicked up.<|im_end|>\n"
        "<|im_start|>user\nPut it in the sink.<|im_end|>\n"
        "<|im_start|>assistant\nDone.\nIt is in the sink.<|im_end|>\n"
        "<|im_start|>user\nNow wash it.<|im_end|>\n<|im_start|>assistant\nWashing.<|im_end|>\n"
    ),
    "potential": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPick up the cup.<|im_end|>\n<|im_start|>assistant\nPicked up.<|im_end|>\n"
        "<|im_start|>user\nPut it in the sink.<|im_end|>\n"
        "<|im_start|>assistant\nDone.\nIt is in the sink.<|im_end|>\n"
        "<|im_start|>user\nNow wash it.<|im_end|>\n<|im_start|>assistant\nWashing.<|im_end|>\n"
        "<|im_start|>user\nWhat next?<|im_end|>\n<|im_start|>assistant\n"
    ),
}

# =====================================================================================================
# Gemma-2 instruction-tuned (no system prompt; "<bos>" removed)
# =====================================================================================================

GEMMA_A = {
    "turns": [
        "<bos><start_of_turn>user\nWhat is in the image?<end_of_turn>\n<start_of_turn>model\n",
        "A red cube next to a blue bowl.<end_of_turn>\n",
        "<start_of_turn>user\nDéplace le cube rouge → à gauche 🤖<end_of_turn>\n<start_of_turn>model\n",
        "Done:  the cube is on the left.<end_of_turn>\n",
    ],
    "generation": (
        "<start_of_turn>user\nWhat is in the image?<end_of_turn>\n"
        "<start_of_turn>model\nA red cube next to a blue bowl.<end_of_turn>\n"
        "<start_of_turn>user\nDéplace le cube rouge → à gauche 🤖<end_of_turn>\n<start_of_turn>model\n"
    ),
    "prompt": (
        "<start_of_turn>user\nWhat is in the image?<end_of_turn>\n"
        "<start_of_turn>model\nA red cube next to a blue bowl.<end_of_turn>\n"
        "<start_of_turn>user\nDéplace le cube rouge → à gauche 🤖<end_of_turn>\n"
        "<start_of_turn>model\nDone:  the cube is on the left.<end_of_turn>\n"
    ),
    "potential": (
        "<start_of_turn>user\nWhat is in the image?<end_of_turn>\n"
        "<start_of_turn>model\nA red cube next to a blue bowl.<end_of_turn>\n"
        "<start_of_turn>user\nDéplace le cube rouge → à gauche 🤖<end_of_turn>\n"
        "<start_of_turn>model\nDone:  the cube is on the left.<end_of_turn>\n"
        "<start_of_turn>user\nWhat next?<end_of_turn>\n<start_of_turn>model\n"
    ),
}

GEMMA_B = {
    "turns": [
        "<bos><start_of_turn>user\nPick up the cup.<end_of_turn>\n<start_of_turn>model\n",
        "Picked up.<end_of_turn>\n",
        "<start_of_turn>user\nPut it in the sink.<end_of_turn>\n<start_of_turn>model\n",
        "Done.\nIt is in the sink.<end_of_turn>\n",
        "<start_of_turn>user\nNow wash it.<end_of_turn>\n<start_of_turn>model\n",
        "Washing.<end_of_turn>\n",
    ],
    "generation": (
        "<start_of_turn>user\nPick up the cup.<end_of_turn>\n<start_of_turn>model\nPicked up.<end_of_turn>\n"
        "<start_of_turn>user\nPut it in the sink.<end_of_turn>\n"
        "<start_of_turn>model\nDone.\nIt is in the sink.<end_of_turn>\n"
        "<start_of_turn>user\nNow wash it.<end_of_turn>\n<start_of_turn>model\n"
    ),
    "prompt": (
        "<start_of_turn>user\nPick up the cup.<end_of_turn>\n<start_of_turn>model\nPicked up.<end_of_turn>\n"
        "<start_of_turn>user\nPut it in the sink.<end_of_turn>\n"
        "<start_of_turn>model\nDone.\nIt is in the sink.<end_of_turn>\n"
        "<start_of_turn>user\nNow wash it.<end_of_turn>\n<start_of_turn>model\nWashing.<end_of_turn>\n"
    ),
    "potential": (
        "<start_of_turn>user\nPick up the cup.<end_of_turn>\n<start_of_turn>model\nPicked up.<end_of_turn>\n"
        "<start_of_turn>user\nPut it in the sink.<end_of_turn>\n"
        "<start_of_turn>model\nDone.\nIt is in the sink.<end_of_turn>\n"
        "<start_of_turn>user\nNow wash it.<end_of_turn>\n<start_of_turn>model\nWashing.<end_of_turn>\n"
        "<start_of_turn>user\nWhat next?<end_of_turn>\n<start_of_turn>model\n"
    ),
}

# =====================================================================================================
# Phi-3.5-mini-instruct (system block only when given; no BOS)
# =====================================================================================================

PHI35_A_DEFAULT = {
    "turns": [
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\n",
        "A red cube next to a blue bowl.<|end|>\n",
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n",
        "\tDone:  the cube is on the left.\n<|end|>\n",
    ],
    "generation": (
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA red cube next to a blue bowl.<|end|>\n"
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n"
    ),
    "prompt": (
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA red cube next to a blue bowl.<|end|>\n"
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n"
        "\tDone:  the cube is on the left.\n<|end|>\n"
    ),
    "potential": (
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA red cube next to a blue bowl.<|end|>\n"
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n"
        "\tDone:  the cube is on the left.\n<|end|>\n"
        "<|user|>\nWhat next?<|end|>\n<|assistant|>\n"
    ),
}

PHI35_A_SYSTEM = {
    "turns": [
        (
            "<|system|>\nYou control a robot arm.<|end|>\n"
            "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\n"
        ),
        "A red cube next to a blue bowl.<|end|>\n",
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n",
        "\tDone:  the cube is on the left.\n<|end|>\n",
    ],
    "generation": (
        "<|system|>\nYou control a robot arm.<|end|>\n"
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA red cube next to a blue bowl.<|end|>\n"
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n"
    ),
    "prompt": (
        "<|system|>\nYou control a robot arm.<|end|>\n"
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA red cube next to a blue bowl.<|end|>\n"
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n"
        "\tDone:  the cube is on the left.\n<|end|>\n"
    ),
    "potential": (
        "<|system|>\nYou control a robot arm.<|end|>\n"
        "<|user|>\nWhat is in the image?<|end|>\n<|assistant|>\nA red cube next to a blue bowl.<|end|>\n"
        "<|user|>\n  Déplace le cube rouge → à gauche 🤖  <|end|>\n<|assistant|>\n"
        "\tDone:  the cube is on the left.\n<|end|>\n"
        "<|user|>\nWhat next?<|end|>\n<|assistant|>\n"
    ),
}

PHI35_B_SYSTEM = {
    "turns": [
        "<|system|>\nYou control a robot arm.<|end|>\n<|user|>\nPick up the cup.<|end|>\n<|assistant|>\n",
        "Picked up.<|end|>\n",
        "<|user|>\nPut it in the sink.<|end|>\n<|assistant|>\n",
        "Done.\nIt is in the sink.<|end|>\n",
        "<|user|>\nNow wash it.<|end|>\n<|assistant|>\n",
        "Washing.<|end|>\n",
    ],
    "generation": (
        "<|system|>\nYou control a robot arm.<|end|>\n"
        "<|user|>\nPick up the cup.<|end|>\n<|assistant|>\nPicked up.<|end|>\n"
        "<|user|>\nPut it in the sink.<|end|>\n<|assistant|>\nDone.\nIt is in the sink.<|end|>\n"
        "<|user|>\nNow wash it.<|end|>\n<|assistant|>\n"
    ),
    "prompt": (
        "<|system|>\nYou control a robot arm.<|end|>\n"
        "<|user|>\nPick up the cup.<|end|>\n<|assistant|>\nPicked up.<|end|>\n"
        "<|user|>\nPut it in the sink.<|end|>\n<|assistant|>\nDone.\nIt is in the sink.<|end|>\n"
        "<|user|>\nNow wash it.<|end|>\n<|assistant|>\nWashing.<|end|>\n"
    ),
    "potential": (
        "<|system|>\nYou control a robot arm.<|end|>\n"
        "<|user|>\nPick up the cup.<|end|>\n<|assistant|>\nPicked up.<|end|>\n"
        "<|user|>\nPut it in the sink.<|end|>\n<|assistant|>\nDone.\nIt is in the sink.<|end|>\n"
        "<|user|>\nNow wash it.<|end|>\n<|assistant|>\nWashing.<|end|>\n"
        "<|user|>\nWhat next?<|end|>\n<|assistant|>\n"
    ),
}

# (builder, constructor kwargs, conversation, golden). Shared with test_family_chat_templates.py.
CHAT_CASES = {
    "llama3-A-default": (Llama3InstructPromptBuilder, {}, CONVERSATION_A, LLAMA3_A_DEFAULT),
    "llama3-A-system": (
        Llama3InstructPromptBuilder,
        {"system_prompt": SYSTEM},
        CONVERSATION_A,
        LLAMA3_A_SYSTEM,
    ),
    "llama3-B-system-date": (
        Llama3InstructPromptBuilder,
        {"system_prompt": SYSTEM, "date_string": DATE},
        CONVERSATION_B,
        LLAMA3_B_SYSTEM_DATE,
    ),
    "qwen2.5-A-default": (Qwen25InstructPromptBuilder, {}, CONVERSATION_A, QWEN_A_DEFAULT),
    "qwen2.5-A-system": (
        Qwen25InstructPromptBuilder,
        {"system_prompt": SYSTEM},
        CONVERSATION_A,
        QWEN_A_SYSTEM,
    ),
    "qwen2.5-B-default": (Qwen25InstructPromptBuilder, {}, CONVERSATION_B, QWEN_B_DEFAULT),
    "gemma2-A": (Gemma2InstructPromptBuilder, {}, CONVERSATION_A, GEMMA_A),
    "gemma2-B": (Gemma2InstructPromptBuilder, {}, CONVERSATION_B, GEMMA_B),
    "phi3.5-A-default": (Phi35InstructPromptBuilder, {}, CONVERSATION_A, PHI35_A_DEFAULT),
    "phi3.5-A-system": (
        Phi35InstructPromptBuilder,
        {"system_prompt": SYSTEM},
        CONVERSATION_A,
        PHI35_A_SYSTEM,
    ),
    "phi3.5-B-system": (
        Phi35InstructPromptBuilder,
        {"system_prompt": SYSTEM},
        CONVERSATION_B,
        PHI35_B_SYSTEM,
    ),
}
CASES = [pytest.param(*case, id=name) for name, case in CHAT_CASES.items()]
FAMILIES = ["prismatic", "openvla"]


def run(builder, conversation):
    return [builder.add_turn(role, message) for role, message in conversation]


@pytest.mark.parametrize("model_family", FAMILIES)
@pytest.mark.parametrize(("cls", "kwargs", "conversation", "golden"), CASES)
def test_add_turn_returns_the_text_it_added(model_family, cls, kwargs, conversation, golden) -> None:
    assert run(cls(model_family, **kwargs), conversation) == golden["turns"]


@pytest.mark.parametrize(("cls", "kwargs", "conversation", "golden"), CASES)
def test_generation_prompt_keeps_its_trailing_newline(cls, kwargs, conversation, golden) -> None:
    builder = cls("openvla", **kwargs)
    run(builder, conversation[:-1])
    prompt = builder.get_prompt()
    assert prompt == golden["generation"]
    assert prompt.endswith("\n")  # [regression] rstrip() would cut the newline the model expects


@pytest.mark.parametrize(("cls", "kwargs", "conversation", "golden"), CASES)
def test_prompt_after_the_last_reply(cls, kwargs, conversation, golden) -> None:
    builder = cls("openvla", **kwargs)
    run(builder, conversation)
    assert builder.get_prompt() == golden["prompt"]


@pytest.mark.parametrize(("cls", "kwargs", "conversation", "golden"), CASES)
def test_potential_prompt_for_the_next_message(cls, kwargs, conversation, golden) -> None:
    builder = cls("openvla", **kwargs)
    run(builder, conversation)
    assert builder.get_potential_prompt(NEXT_MESSAGE) == golden["potential"]
    assert builder.get_prompt() == golden["prompt"]  # unchanged


@pytest.mark.parametrize(("cls", "kwargs", "conversation", "golden"), CASES)
def test_prismatic_compat_has_no_other_rendering_for_new_families(cls, kwargs, conversation, golden) -> None:
    builder = cls("openvla", prismatic_compat=True, **kwargs)
    assert run(builder, conversation) == golden["turns"]


# =====================================================================================================
# Fresh builders, system prompts, dates
# =====================================================================================================

FRESH_POTENTIAL = [
    pytest.param(
        Llama3InstructPromptBuilder,
        {},
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat next?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        id="llama3",
    ),
    pytest.param(
        Qwen25InstructPromptBuilder,
        {},
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n What next? <|im_end|>\n<|im_start|>assistant\n",  # the template keeps whitespace
        id="qwen2.5",
    ),
    pytest.param(
        Gemma2InstructPromptBuilder,
        {},
        "<start_of_turn>user\nWhat next?<end_of_turn>\n<start_of_turn>model\n",
        id="gemma2",
    ),
    pytest.param(
        Phi35InstructPromptBuilder, {}, "<|user|>\n What next? <|end|>\n<|assistant|>\n", id="phi3.5"
    ),
    pytest.param(
        Phi35InstructPromptBuilder,
        {"system_prompt": "   "},  # whitespace only is not empty to the template: it writes the block
        "<|system|>\n   <|end|>\n<|user|>\n What next? <|end|>\n<|assistant|>\n",
        id="phi3.5-blank-system",
    ),
    pytest.param(
        Qwen25InstructPromptBuilder,
        {"system_prompt": ""},  # an explicit empty system message: the template writes an empty block
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n What next? <|im_end|>\n<|im_start|>assistant\n",
        id="qwen2.5-empty-system",
    ),
    pytest.param(
        Llama3InstructPromptBuilder,
        {"system_prompt": "\n  You control a robot arm. \n"},  # trimmed, as the template does
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nYou control a robot arm.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat next?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        id="llama3-padded-system",
    ),
]


@pytest.mark.parametrize(("cls", "kwargs", "expected"), FRESH_POTENTIAL)
def test_potential_prompt_on_a_fresh_builder(cls, kwargs, expected) -> None:
    builder = cls("prismatic", **kwargs)
    assert builder.get_prompt() == ""
    assert builder.get_potential_prompt(" <image>\nWhat next? ") == expected


def test_gemma2_rejects_a_system_prompt_with_a_clear_error() -> None:
    for compat in (False, True):
        with pytest.raises(PromptFormatError) as info:
            Gemma2InstructPromptBuilder("openvla", system_prompt=SYSTEM, prismatic_compat=compat)
        msg = str(info.value)
        assert "'gemma2-instruct' prompt format has no system prompt" in msg
        assert "'You control a robot arm.'" in msg and "first human message" in msg


@pytest.mark.parametrize(
    "cls",
    [Qwen25InstructPromptBuilder, Gemma2InstructPromptBuilder, Phi35InstructPromptBuilder, PurePromptBuilder],
)
def test_date_string_only_where_the_format_has_a_date_line(cls) -> None:
    with pytest.raises(PromptFormatError, match=r"has no date line, got date_string='05 Mar 2026'"):
        cls("openvla", date_string=DATE)


@pytest.mark.parametrize("bad", ["", "  ", "26 Jul\n2024"])
def test_bad_date_string(bad) -> None:
    with pytest.raises(PromptFormatError, match=r"one non-empty line of text such as '26 Jul 2024'"):
        Llama3InstructPromptBuilder("openvla", date_string=bad)


def test_empty_reply_stays_empty_in_official_templates() -> None:
    # The templates write an empty assistant message as is (no " " as the original builders do).
    expected = {
        Llama3InstructPromptBuilder: "<|eot_id|>",
        Qwen25InstructPromptBuilder: "<|im_end|>\n",
        Gemma2InstructPromptBuilder: "<end_of_turn>\n",
        Phi35InstructPromptBuilder: "<|end|>\n",
    }
    for cls, reply in expected.items():
        builder = cls("openvla")
        builder.add_turn("human", "Pick up the cup.")
        assert builder.add_turn("gpt", "<image>") == reply


@pytest.mark.parametrize(
    "cls",
    [
        Llama3InstructPromptBuilder,
        Qwen25InstructPromptBuilder,
        Gemma2InstructPromptBuilder,
        Phi35InstructPromptBuilder,
    ],
)
def test_roles_must_alternate(cls) -> None:
    builder = cls("openvla")
    with pytest.raises(ConversationError, match="expected 'human'"):
        builder.add_turn("gpt", "Hello.")
    builder.add_turn("user", "Hi.")
    with pytest.raises(ConversationError, match="expected 'gpt'"):
        builder.add_turn("user", "Hi again.")


# =====================================================================================================
# Pure format over each family's vocabulary, and the original's Mistral / Phi-2 formats
# =====================================================================================================

PURE_EOS = [
    pytest.param(PurePromptBuilder, "</s>", id="llama2-mistral"),
    pytest.param(Llama3PurePromptBuilder, "<|end_of_text|>", id="llama3"),
    pytest.param(Qwen25PurePromptBuilder, "<|endoftext|>", id="qwen2.5"),
    pytest.param(Gemma2PurePromptBuilder, "<eos>", id="gemma2"),
]


@pytest.mark.parametrize(("cls", "eos"), PURE_EOS)
def test_pure_format_ends_replies_with_the_family_eos(cls, eos) -> None:
    builder = cls("openvla")
    assert builder.add_turn("human", "<image>\nWhat action should the robot take to open the drawer?") == (
        "In: What action should the robot take to open the drawer?\nOut: "
    )
    assert builder.get_prompt() == "In: What action should the robot take to open the drawer?\nOut:"
    assert builder.add_turn("gpt", "ක彦效") == "ක彦效" + eos
    assert (
        builder.get_prompt() == "In: What action should the robot take to open the drawer?\nOut: ක彦效" + eos
    )
    assert issubclass(cls, PurePromptBuilder)


def test_mistral_instruct_and_phi2_keep_the_original_formats() -> None:
    mistral = MistralInstructPromptBuilder("openvla")
    run(mistral, CONVERSATION_A[:3])
    assert mistral.get_prompt() == (
        "[INST] What is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST]"
    )
    phi = PhiPromptBuilder("openvla")
    run(phi, CONVERSATION_A[:3])
    assert phi.get_prompt() == (
        "<|endoftext|>Input: What is in the image?\nOutput: A red cube next to a blue bowl.\n<|endoftext|>"
        "Input: Déplace le cube rouge → à gauche 🤖\nOutput:"
    )


def test_older_formats_still_strip_trailing_whitespace() -> None:
    builder = LLaMa2ChatPromptBuilder("openvla")
    builder.add_turn("human", "Hi.")
    assert not builder.get_prompt().endswith((" ", "\n"))
