"""The embedded VLA demo: teach a backbone OpenVLA-style actions for a few instructions, then predict them.

Examples are built the OpenVLA way (`vla_example`): the instruction in the Pure prompt format ("What
action should the robot take to ...?"), the 7-D action as 7 action tokens in the reply, labels on the
action tokens and EOS only; actions are generated from OpenVLA's prompt (`vla_prompt`, ending with the
"▁" before the actions), exactly 7 tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_backbones.data.actions import ActionTokenizer
from llm_backbones.data.examples import PaddedCollator, vla_example, vla_prompt
from llm_backbones.errors import ActionError
from llm_backbones.training.finetune import apply_finetune_mode, train_steps

INSTRUCTIONS = (
    "pick up the red block",
    "open the top drawer",
    "put the carrot in the pot",
    "close the microwave door",
    "push the blue cup to the left",
    "stack the green block on the yellow block",
    "wipe the table with the sponge",
    "turn on the faucet",
)
ACTION_DIM = 7


def demo_actions(n: int, seed: int = 0) -> torch.Tensor:
    """`n` fixed 7-D actions in [-1, 1] (normalized end-effector deltas + gripper), from a seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, ACTION_DIM, generator=generator, dtype=torch.float64) * 2 - 1


@dataclass
class DemoResult:
    instructions: list[str]
    true_actions: torch.Tensor
    predicted_actions: torch.Tensor
    losses: list[float]
    action_token_accuracy: float
    seconds: float
    trainable: str = ""


def run_vla_demo(
    backbone,
    tokenizer,
    *,
    steps: int = 60,
    lr: float = 3e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> DemoResult:
    start = time.perf_counter()
    torch.manual_seed(seed)
    device = next(backbone.parameters()).device
    action_tokenizer = ActionTokenizer(tokenizer)
    actions = demo_actions(len(INSTRUCTIONS), seed)
    builder = backbone.prompt_builder_fn
    examples = [
        vla_example(tokenizer, builder, action_tokenizer, text, action)
        for text, action in zip(INSTRUCTIONS, actions, strict=True)
    ]
    collate = PaddedCollator(backbone.llm_max_length, backbone.pad_token_id)
    batch = {k: v.to(device) for k, v in collate(examples).items()}

    summary = apply_finetune_mode(backbone, "full")
    optimizer = torch.optim.AdamW(
        [p for p in backbone.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    losses = train_steps(backbone, (batch for _ in range(steps)), optimizer, on_step=on_step)

    backbone.eval()
    true_ids = action_tokenizer.encode(actions)
    predicted, correct = [], 0
    for text, truth in zip(INSTRUCTIONS, true_ids, strict=True):
        prompt = vla_prompt(tokenizer, builder, text, action_tokenizer=action_tokenizer)[None].to(device)
        try:
            action = backbone.generate_actions(action_tokenizer, input_ids=prompt, action_dim=ACTION_DIM)[
                0
            ].cpu()
        except ActionError:  # not (yet) an action: every token of it counts as wrong
            action = torch.full((ACTION_DIM,), float("nan"), dtype=torch.float64)
        else:  # a bin centre encodes back to its own bin: compare the tokens
            correct += int((action_tokenizer.encode(action) == truth).sum())
        predicted.append(action)
    predicted_actions = torch.stack(predicted)
    return DemoResult(
        instructions=list(INSTRUCTIONS),
        true_actions=actions,
        predicted_actions=predicted_actions,
        losses=losses,
        action_token_accuracy=correct / true_ids.numel(),
        seconds=time.perf_counter() - start,
        trainable=str(summary),
    )
