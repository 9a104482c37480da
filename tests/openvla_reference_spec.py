"""The tiny OpenVLA checkpoints of the policy fixtures, as data and pure rules (numpy + stdlib only).

Two environments use this file and must agree on every number it makes:
- `scripts/make_openvla_fixtures.py` runs in a throw-away virtualenv with the versions OpenVLA pins
  (transformers 4.40.1, tokenizers 0.19.1, timm 0.9.16) and OpenVLA's own classes: it builds each checkpoint
  with `OpenVLAForActionPrediction`, sets every tensor to `weight(name, shape)`, runs OpenVLA's processor and
  `predict_action`, and writes what came out to `tests/golden/fixtures/openvla_policy/`.
- the suite (current torch/transformers, no OpenVLA code) rebuilds the same checkpoints from the committed
  config and tensor list with the same rule, loads them with `load_vla`, and compares.

So no weight file is committed: a tensor's values are a function of the seed and its HF OpenVLA name. The
rule is written with numpy's PCG64 generator, whose streams are stable across numpy versions.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

SEED = 20261203
# Action tokens: the last 256 ids of LLaMA-2's 32000-piece vocabulary (OpenVLA's ActionTokenizer).
ACTION_TOKEN_MIN, ACTION_TOKEN_MAX = 31744, 31999
# The LM head's action rows are scaled by this, so that greedy decoding prefers action tokens (a trained
# VLA does). 3.0: every step of every case is an action token. Checkpoints with "action_row_scale" 1.75
# have cases whose argmax is another token at some steps: OpenVLA's clipping of those is in the fixtures.
ACTION_ROW_SCALE = 3.0
VISION_DEPTH = 3  # each timm tower cut to 3 blocks: the featurizer reads block 1 (the second to last)

# The tiny LLaMA-2 LLM every checkpoint uses (text_config before OpenVLA's convert script pads vocab_size
# by pad_to_multiple_of: 32000 + 64 = 32064 rows, <PAD> = 32000).
TEXT_CONFIG = {
    "vocab_size": 32064,
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "pad_token_id": 32000,
}

NORM_STATS = {
    "bridge_orig": {
        "action": {
            "q01": [-0.03, -0.04, -0.03, -0.15, -0.12, -0.25, 0.0],
            "q99": [0.03, 0.04, 0.04, 0.14, 0.13, 0.26, 1.0],
            "mean": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],
            "std": [0.01, 0.01, 0.01, 0.05, 0.05, 0.08, 0.5],
            "max": [0.4, 0.4, 0.4, 0.8, 0.8, 1.0, 1.0],
            "min": [-0.4, -0.4, -0.4, -0.8, -0.8, -1.0, 0.0],
            "mask": [True, True, True, True, True, True, False],
        }
    },
    "fractal20220817_data": {
        "action": {
            "q01": [-0.22, -0.14, -0.23, -0.35, -0.42, -0.43, 0.0],
            "q99": [0.18, 0.14, 0.21, 0.35, 0.39, 0.43, 1.0],
            "mask": [True, True, True, True, True, True, False],
        }
    },
}

# One entry per checkpoint: a fused and single towers of every family, the three resize strategies.
CHECKPOINTS = {
    "dinosiglip-224-naive": {"vision_backbone_id": "dinosiglip-vit-so-224px", "strategy": "resize-naive"},
    "siglip-224-letterbox": {"vision_backbone_id": "siglip-vit-so400m", "strategy": "letterbox"},
    "clip-224-crop": {"vision_backbone_id": "clip-vit-l", "strategy": "resize-crop"},
    "dinov2-224-letterbox": {
        "vision_backbone_id": "dinov2-vit-l",
        "strategy": "letterbox",
        "action_row_scale": 1.75,
    },
    "in1k-224-crop": {
        "vision_backbone_id": "in1k-vit-l",
        "strategy": "resize-crop",
        "action_row_scale": 1.75,
    },
    # the larger inputs: CLIP at 336 px and SigLIP at 384 px, each fused with DINOv2 (2 cases each)
    "dinoclip-336-letterbox": {
        "vision_backbone_id": "dinoclip-vit-l-336px",
        "strategy": "letterbox",
        "cases": 2,
    },
    "dinosiglip-384-naive": {
        "vision_backbone_id": "dinosiglip-vit-so-384px",
        "strategy": "resize-naive",
        "cases": 2,
    },
}

INSTRUCTIONS = [
    "pick up the red block",
    "Open the top drawer",
    "put the spoon in the bowl and then close the microwave door",
    "move left",
    "place the carrot on the plate",
    "wipe the table with the towel",
]
# (height, width) of the test images: square, wide, tall, odd sizes (letterbox pads by an odd amount)
IMAGE_SIZES = [(224, 224), (256, 320), (300, 180), (127, 201), (480, 640), (96, 96)]


def _rng(*parts: str | int) -> np.random.Generator:
    words = [SEED] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(words)


def weight(name: str, shape: tuple[int, ...], checkpoint: str | None = None) -> np.ndarray:
    """The float32 values of the tensor `name` (its HF OpenVLA name) of `shape` in `checkpoint`.

    Norm scales near 1, small biases and LayerScale factors, positional/class/register tokens of 0.02,
    matrices of std 1/sqrt(fan_in), embeddings of std 1; the LM head's action rows scaled by the checkpoint's
    "action_row_scale" (default ACTION_ROW_SCALE).
    """
    scale = CHECKPOINTS.get(checkpoint, {}).get("action_row_scale", ACTION_ROW_SCALE)
    shape = tuple(int(s) for s in shape)
    z = _rng(name).standard_normal(shape, dtype=np.float64)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("scale_factor", "gamma"):  # timm LayerScale (OpenVLA's HF name is scale_factor)
        out = 0.5 + 0.1 * z
    elif leaf == "bias":
        out = 0.02 * z
    elif len(shape) == 1:  # LayerNorm / RMSNorm weights
        out = 1.0 + 0.1 * z
    elif leaf in ("pos_embed", "cls_token", "reg_token", "latent"):
        out = 0.02 * z
    elif "embed_tokens" in name:
        out = z
    else:
        fan_in = int(np.prod(shape[1:]))
        out = z / math.sqrt(fan_in)
        if name.endswith("lm_head.weight"):
            out[ACTION_TOKEN_MIN : ACTION_TOKEN_MAX + 1] *= scale
    return out.astype(np.float32)


def image(index: int, height: int, width: int) -> np.ndarray:
    """A deterministic uint8 RGB image, H x W x 3: smooth gradients (so resizing matters) plus noise."""
    rng = _rng("image", index)
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3))
    freq = rng.uniform(1.0, 6.0, size=(1, 1, 3))
    base = 0.5 + 0.35 * np.sin(freq * (x * 2.0 + y * 3.0) * np.pi + phase)
    noise = rng.normal(0.0, 0.08, size=(height, width, 3))
    return np.clip((base + noise) * 255.0, 0, 255).round().astype(np.uint8)


def cases(checkpoint: str) -> list[tuple[int, tuple[int, int], str]]:
    """The (image index, (height, width), instruction) pairs run on `checkpoint`: 8 on the first fused one,
    4 on each single tower, the "cases" of the others (28 in all)."""
    names = list(CHECKPOINTS)
    k = names.index(checkpoint)
    n = CHECKPOINTS[checkpoint].get("cases", 8 if k == 0 else 4)
    out = []
    for j in range(n):
        i = (k * 3 + j) % len(IMAGE_SIZES)
        out.append((10 * k + j, IMAGE_SIZES[i], INSTRUCTIONS[(k + j) % len(INSTRUCTIONS)]))
    return out


def prompt(instruction: str) -> str:
    """OpenVLA's deploy.py / README prompt for v1 checkpoints."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def sample_indices(total: int, k: int = 2048) -> np.ndarray:
    """k fixed flat indices into a tensor of `total` elements (sorted, without repeats): the pixel_values
    values the fixtures keep (a whole fused 224 px image is 301,056 floats)."""
    return np.sort(_rng("sample", total).choice(total, size=min(k, total), replace=False))
