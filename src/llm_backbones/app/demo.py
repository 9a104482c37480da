"""The embedded demos, offline: an LLM backbone taught actions, then a whole VLA trained from scratch.

`run_vla_demo` teaches a backbone OpenVLA-style actions for a few instructions, then predicts them.
Examples are built the OpenVLA way (`vla_example`): the instruction in the Pure prompt format ("What
action should the robot take to ...?"), the 7-D action as 7 action tokens in the reply, labels on the
action tokens and EOS only; actions are generated from OpenVLA's prompt (`vla_prompt`, ending with the
"▁" before the actions), exactly 7 tokens.

`run_policy_demo` is the whole VLA path: a fresh policy (`build_vla`: the LLM plus a small random ViT and a
new projector) fine-tuned by `run_finetune_vla` on synthetic images, each with its own action and all with
one instruction (so only the image tells them apart), then `predict_actions` on those images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


# === The whole VLA, from scratch ===
POLICY_VISION = "siglip-vit-b16-224px"
POLICY_VISION_DEPTH = 2  # one block built (the featurizer reads the second to last): a few seconds on a CPU
POLICY_INSTRUCTION = "pick up the block"
# one flat colour per image, and a white square in its own place
POLICY_COLOURS = ((200, 40, 40), (40, 160, 60), (40, 70, 200), (220, 200, 40))
POLICY_IMAGE_SIDE = 32


def demo_images(n: int = len(POLICY_COLOURS)) -> list[np.ndarray]:
    """`n` (at most 4) distinct uint8 `[32, 32, 3]` camera images: a flat colour each, a white square in a
    corner of its own."""
    images = []
    for k, colour in enumerate(POLICY_COLOURS[:n]):
        image = np.empty((POLICY_IMAGE_SIDE, POLICY_IMAGE_SIDE, 3), dtype=np.uint8)
        image[:] = colour
        top, left = 16 * (k // 2), 16 * (k % 2)
        image[top + 4 : top + 12, left + 4 : left + 12] = 255
        images.append(image)
    return images


def demo_robot_dataset(seed: int = 0):
    """The demo's robot data: one episode, one frame per `demo_images` image, each with its own 7-D action
    (`demo_actions`) and all with `POLICY_INSTRUCTION`."""
    from llm_backbones.data.robot import Episode, RobotDataset
    from llm_backbones.data.robot.media import ArrayImages

    images = demo_images()
    actions = demo_actions(len(images), seed).numpy().astype(np.float32)
    episode = Episode(
        episode=0,
        source="<demo>",
        actions=actions,
        instructions=(POLICY_INSTRUCTION,) * len(images),
        images=ArrayImages(tuple(images)),
    )
    return RobotDataset("demo", [episode], format="in-memory", root="<demo>")


@dataclass
class PolicyDemoResult:
    """What `run_policy_demo` shows. `targets` are the frames' actions clipped to the dataset's q01..q99 (what
    OpenVLA's normalization keeps); `bin_errors` are |predicted - target| in half action bins (robot units:
    `(q99 - q01) / 2 / 255` per dimension), so at most 1 means the right bin."""

    llm_backbone_id: str
    vision_backbone_id: str
    instruction: str
    targets: np.ndarray
    predicted: np.ndarray
    bin_errors: np.ndarray
    losses: list[float]
    action_token_accuracy: float  # greedy decoding of every image's action, against the target tokens
    parameters: int
    seconds: float


def run_policy_demo(
    llm_backbone_id: str = "llama2-tiny-pure",
    *,
    llm_model_path: str | Path | None = None,
    steps: int = 40,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> PolicyDemoResult:
    """Build a fresh policy (`llm_backbone_id` + `POLICY_VISION` at `POLICY_VISION_DEPTH` blocks, random
    towers), fine-tune it (mode full, frozen towers) on `demo_robot_dataset`, and predict every image's
    action with greedy decoding."""
    from llm_backbones.data.robot import normalize_actions
    from llm_backbones.training.vla import run_finetune_vla
    from llm_backbones.vla.assemble import build_vla

    start = time.perf_counter()
    policy = build_vla(
        llm_backbone_id,
        POLICY_VISION,
        llm_model_path=llm_model_path,
        vision_depth=POLICY_VISION_DEPTH,
        seed=seed,
    )
    dataset = demo_robot_dataset(seed)
    result = run_finetune_vla(
        policy,
        dataset,
        mode="full",
        steps=steps,
        batch_size=len(dataset),
        lr=lr,
        lr_schedule="constant",
        seed=seed,
        save_every=0,
        device=device,
        on_step=on_step,
    )
    frames = [dataset[i] for i in range(len(dataset))]
    predicted = policy.predict_actions([f.image for f in frames], [f.instruction for f in frames])
    stats = result.norm_stats[result.unnorm_key]
    low, high = (np.asarray(stats["action"][k], dtype=np.float64) for k in ("q01", "q99"))
    targets = np.clip(dataset.actions().astype(np.float64), low, high)
    half_bin = (high - low) / 2 / 255
    expected = policy.action_tokenizer.encode(torch.from_numpy(normalize_actions(dataset.actions(), stats)))
    return PolicyDemoResult(
        llm_backbone_id=llm_backbone_id,
        vision_backbone_id=POLICY_VISION,
        instruction=POLICY_INSTRUCTION,
        targets=targets,
        predicted=predicted,
        bin_errors=np.abs(predicted - targets) / half_bin,
        losses=result.losses,
        action_token_accuracy=float((policy.last_tokens == expected).double().mean()),
        parameters=result.total_params,
        seconds=time.perf_counter() - start,
    )
