"""Training examples per second: ours (whole-prompt tokenization, exact masks, parity checked) against the
turn-by-turn method of Prismatic's FinetuneDataset, on the same conversations in the same run.

The baseline tokenizes each turn's text separately (BOS only on the first, trailing whitespace
stripped for LLaMA tokenizers) and concatenates; its "mismatches" are the conversations whose tokens
differ from the whole-prompt tokenization a model sees at inference. Prints JSON.

    python benchmarks/bench_examples.py [--conversations N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from datetime import date

import torch
from transformers import AutoTokenizer, LlamaTokenizer

from llm_backbones import (
    LLaMa2ChatPromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from llm_backbones.core.backbones.embedded import ASSETS_DIR
from llm_backbones.data.actions import ActionTokenizer
from llm_backbones.data.examples import IGNORE_INDEX, tokenize_conversation

WORDS = "the robot arm picks up a red cup from table and places it in bowl near drawer , . ? 3 blocks".split()


def make_conversations(n: int, tokenizer, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    actions = ActionTokenizer(tokenizer)
    convs = []
    for i in range(n):
        if i % 2 == 0:  # OpenVLA: one instruction, one 7-D action reply
            act = [rng.uniform(-1, 1) for _ in range(7)]
            convs.append(
                [
                    {
                        "from": "human",
                        "value": f"What action should the robot take to {' '.join(rng.choices(WORDS, k=6))}?",
                    },
                    {"from": "gpt", "value": actions(act)},
                ]
            )
        else:  # LLaVA-style multi-turn
            conv = []
            for t in range(rng.randint(1, 4)):
                q = ("<image>\n" if t == 0 else "") + " ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "?"
                conv.append({"from": "human", "value": q})
                conv.append(
                    {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(3, 30))) + "."}
                )
            convs.append(conv)
    return convs


def turn_by_turn(tokenizer, builder_fn, conversation) -> dict[str, torch.Tensor]:
    """Prismatic's FinetuneDataset method (re-stated): tokenize each added turn on its own."""
    builder, input_ids, labels = builder_fn("prismatic"), [], []
    for i, turn in enumerate(conversation):
        msg = builder.add_turn(turn["from"], turn["value"]).rstrip()
        ids = tokenizer(msg, add_special_tokens=i == 0).input_ids
        input_ids += ids
        labels += [IGNORE_INDEX] * len(ids) if i % 2 == 0 else list(ids)
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}


def rate(fn, convs, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for conv in convs:
            fn(conv)
        best = min(best, time.perf_counter() - start)
    return len(convs) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tokenizers = {
        # the original LLaMA-2 fast-tokenizer pipeline (prepend + replace normalizer), as shipped
        "llama2 (original fast pipeline)": AutoTokenizer.from_pretrained(ASSETS_DIR / "llama2-tiny"),
        # what transformers 5's LlamaTokenizer class builds for a hub Llama-2 (Metaspace, prepend first)
        "llama2 (transformers-5 LlamaTokenizer)": LlamaTokenizer.from_pretrained(ASSETS_DIR / "llama2-tiny"),
    }
    results = []
    for tokenizer_name, tokenizer in tokenizers.items():
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
        convs = make_conversations(args.conversations, tokenizer)
        for builder in (PurePromptBuilder, LLaMa2ChatPromptBuilder, VicunaV15ChatPromptBuilder):

            def builder_fn(family, system_prompt=None, _b=builder):
                return _b(
                    family, system_prompt=system_prompt, prismatic_compat=True
                )  # the baseline's strings

            ours = rate(
                lambda c, tokenizer=tokenizer: tokenize_conversation(tokenizer, builder_fn, c),
                convs,
                args.repeats,
            )
            base = rate(
                lambda c, tokenizer=tokenizer: turn_by_turn(tokenizer, builder_fn, c), convs, args.repeats
            )
            mismatches = sum(
                not torch.equal(
                    turn_by_turn(tokenizer, builder_fn, c)["input_ids"],
                    tokenize_conversation(tokenizer, builder_fn, c)["input_ids"],
                )
                for c in convs
            )
            results.append(
                {
                    "tokenizer": tokenizer_name,
                    "builder": builder.__name__,
                    "ours_examples_per_s": round(ours, 1),
                    "turn_by_turn_examples_per_s": round(base, 1),
                    "ratio": round(ours / base, 3),
                    "turn_by_turn_mismatched_conversations": mismatches,
                    "conversations": len(convs),
                }
            )
    print(
        json.dumps(
            {
                "benchmark": "training examples per second",
                "date": date.today().isoformat(),
                "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                "threads)",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
