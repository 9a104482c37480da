"""`--image-aug` (issue 21): OpenVLA's augmentation, `training.vla.augment_image`, stage by stage against
TensorFlow's published formulas (dlimp's `augment_image` runs `tf.image`'s ops on floats in [0, 1], clipping
after each, and converts back with `convert_image_dtype`: x * 255.5, truncated), with an rng whose draws the
test sets; and its seeding through `VLACollator` (seed, step, frame), which makes a resumed run see the same
images. Expected pixels are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_backbones.training.vla import VLACollator, augment_image

SIDE = math.sqrt(0.9)  # the crop's side, as a fraction of the image's: 90% of the area, aspect ratio 1
NONE = (0.5, 0.5, 0.5)  # brightness + 0, contrast x 1, saturation x 1 (the hue draw follows)
# the (low, high) of each draw, in the stages' order: crop offset, brightness, contrast, saturation, hue
RANGES = [(0.0, 1.0), (-0.2, 0.2), (0.8, 1.2), (0.8, 1.2), (-0.05, 0.05)]


class Draws:
    """An rng whose `uniform(low, high)` returns low + f * (high - low) for the fractions f given, in order;
    it records the ranges asked for."""

    def __init__(self, *fractions: float) -> None:
        self.fractions = list(fractions)
        self.asked: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.asked.append((low, high))
        return low + self.fractions.pop(0) * (high - low)


def flat(rgb: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return np.full((*size, 3), rgb, dtype=np.uint8)


# (crop, brightness, contrast, saturation, hue) fractions, the flat input colour, the flat output colour.
# 153, 102, 51 are 0.6, 0.4, 0.2: HSV (1/12, 2/3, 0.6). hsv -> rgb: C = S * V, m = V - C,
# X = C * (1 - |6H mod 2 - 1|); for 6H in [0, 1) the colour is (C, X, 0) + m. Out: floor(x * 255.5).
FLAT_CASES = {
    # 0.6, 0.4, 0.2 -> 153.3, 102.2, 51.1
    "no change": ((0.3, *NONE, 0.5), (153, 102, 51), (153, 102, 51)),
    # brightness adds 0.1: 0.7, 0.5, 0.3 -> 178.85, 127.75, 76.65
    "brightness +0.1": ((0.3, 0.75, 0.5, 0.5, 0.5), (153, 102, 51), (178, 127, 76)),
    # 230, 128, 26 + 0.2: 1.102 (clipped to 1), 0.702, 0.302 -> 255, 179.35, 77.15
    "brightness +0.2, clipped at 1": ((0.3, 1.0, 0.5, 0.5, 0.5), (230, 128, 26), (255, 179, 77)),
    # each channel's mean is its own value: no change. (One mean over all pixels and channels, 0.4, would
    # give 0.64, 0.4, 0.16 -> 163, 102, 40.)
    "contrast x1.2 around each channel's mean": ((0.3, 0.5, 1.0, 0.5, 0.5), (153, 102, 51), (153, 102, 51)),
    # S = 2/3 * 0.8 = 8/15: C = 0.32, m = 0.28, X = 0.16 -> 0.6, 0.44, 0.28 -> 153.3, 112.42, 71.54. (A blend
    # with the gray 0.2989 R + 0.587 G + 0.114 B = 0.43694 would give R = 0.56739 -> 144.)
    "saturation x0.8 in HSV": ((0.3, 0.5, 0.5, 0.0, 0.5), (153, 102, 51), (153, 112, 71)),
    # 204, 102, 17: V = 0.8, S = (0.8 - 1/15) / 0.8 = 11/12, H = (0.4 - 1/15) / (6 * 11/15) = 1/13.2;
    # S * 1.2 = 1.1 clipped to 1: C = 0.8, m = 0, X = 0.8 * 6H = 0.363636 -> 204.4, 92.91, 0. (Unclipped:
    # G = 0.32 -> 81.)
    "saturation x1.2, clipped at 1": ((0.3, 0.5, 0.5, 1.0, 0.5), (204, 102, 17), (204, 92, 0)),
    # H = 1/12 + 0.05 = 2/15, 6H = 0.8: C = 0.4, m = 0.2, X = 0.32 -> 0.6, 0.52, 0.2 -> 153.3, 132.86, 51.1
    "hue +0.05": ((0.3, *NONE, 1.0), (153, 102, 51), (153, 132, 51)),
    # H = 1/12 - 0.05 = 1/30, 6H = 0.2: X = 0.08 -> 0.6, 0.28, 0.2 -> 153.3, 71.54, 51.1
    "hue -0.05": ((0.3, *NONE, 0.0), (153, 102, 51), (153, 71, 51)),
    # 153, 51, 61: H = 1 - 10/612 = 0.98366; + 0.05 = 1.03366, modulo 1: 0.03366, 6H = 0.20196; C = 0.4,
    # m = 0.2, X = 0.080784 -> 0.6, 0.280784, 0.2 -> 153.3, 71.74, 51.1. (Clipped at 1 instead: G = 51.)
    "hue wraps around": ((0.3, *NONE, 1.0), (153, 51, 61), (153, 71, 51)),
    # brightness + 0.1: 0.7, 0.5, 0.3; contrast: flat, no change; saturation x0.9: S = 4/7 * 0.9 = 0.514286,
    # C = 0.36, m = 0.34, H = 0.2 / 2.4 = 1/12 -> 0.7, 0.52, 0.34; hue + 0.05: H = 2/15, S = 0.36 / 0.7,
    # C = 0.36, m = 0.34, X = 0.36 * 0.8 = 0.288 -> 0.7, 0.628, 0.34 -> 178.85, 160.45, 86.87
    "every stage": ((0.3, 0.75, 1.0, 0.25, 1.0), (153, 102, 51), (178, 160, 86)),
}


@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_each_stage_on_a_flat_colour_follows_tensorflow(case: str) -> None:
    fractions, colour, expected = FLAT_CASES[case]
    rng = Draws(*fractions)
    out = augment_image(flat(colour), rng)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    assert (out == np.array(expected, dtype=np.uint8)).all(), (case, out[0, 0])
    assert rng.asked == RANGES  # one draw per stage, OpenVLA's ranges, in its order


def ramps(size: int = 32) -> np.ndarray:
    """R = 8 * column, G = 8 * row, B = 0."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[..., 0] = 8 * np.arange(size)[None, :]
    image[..., 1] = 8 * np.arange(size)[:, None]
    return image


@pytest.mark.parametrize(
    ("u", "written_out"),
    [(0.0, [0, 7, 114, 235]), (0.5, [6, 13, 120, 242]), (1.0, [12, 20, 126, 248])],
)
def test_crop_samples_the_diagonal_box_bilinearly(u: float, written_out: list[int]) -> None:
    """tf.image.crop_and_resize of the box starting at u * (1 - side) on both axes (dlimp draws both offsets
    from one seed), side sqrt(0.9), back to 32 x 32: output column j samples the input at x = start * 31 + j *
    side (the box's corners on pixel centres); bilinear interpolation of a ramp is the ramp itself there."""
    out = augment_image(ramps(), Draws(u, *NONE, 0.5))
    coordinate = u * (1 - SIDE) * 31 + np.arange(32) * SIDE
    expected = np.floor(8 * coordinate / 255 * 255.5).astype(np.uint8)
    assert list(expected[[0, 1, 15, 31]]) == written_out
    np.testing.assert_array_equal(out[..., 0], np.broadcast_to(expected[None, :], (32, 32)))
    np.testing.assert_array_equal(out[..., 1], np.broadcast_to(expected[:, None], (32, 32)))
    assert (out[..., 2] == 0).all()


def test_contrast_scales_around_each_channels_mean() -> None:
    """R a ramp, G flat at 102: contrast x1.2 stretches R around R's own mean (the cropped ramp 4 * j * side,
    mean 4 * 15.5 * side = 58.82), clipping below 0, and leaves G at 102 (one mean over every channel would
    move it)."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 0] = 4 * np.arange(32)[None, :]
    image[..., 1] = 102
    out = augment_image(image, Draws(0.0, 0.5, 1.0, 0.5, 0.5))
    red = 4 * np.arange(32) * SIDE
    stretched = np.clip(((red - red.mean()) * 1.2 + red.mean()) / 255, 0, 1)
    expected = np.floor(stretched * 255.5).astype(np.uint8)
    # j = 2: (7.59 - 58.82) * 1.2 + 58.82 < 0 -> 0; j = 3: (11.38 - 58.82) * 1.2 + 58.82 = 1.90 -> 1.90;
    # j = 31: (117.64 - 58.82) * 1.2 + 58.82 = 129.40 -> 129.66
    assert (expected[2], expected[3], expected[31]) == (0, 1, 129)
    np.testing.assert_array_equal(out[..., 0], np.broadcast_to(expected[None, :], (32, 32)))
    assert (out[..., 1] == 102).all() and (out[..., 2] == 0).all()


class Frames:
    """A dataset of frames whose `.image` is a gradient of the given size, different for each frame."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def __getitem__(self, i: int):
        y, x = np.mgrid[0 : self.height, 0 : self.width]
        image = np.stack([x * 5 + 10 * i, y * 7, (x + y) * 3 + 40], axis=-1) % 256
        return type("Frame", (), {"image": image.astype(np.uint8)})()


def collate(step: int, frames: list[int], seed: int = 0) -> torch.Tensor:
    """The images a fresh collator (as a resumed run builds) gives at `step`; the image processor stacks
    them as they are."""
    collator = VLACollator(
        Frames(24, 40),
        lambda images: torch.from_numpy(np.stack(images)),
        pad_token_id=0,
        image_aug=True,
        seed=seed,
    )
    collator.step = step
    examples = [
        {"input_ids": [1, 5, 6], "labels": [-100, 5, 6], "action": torch.zeros(3), "frame": f} for f in frames
    ]
    return collator(examples)["pixel_values"]


def test_augmentation_is_seeded_by_seed_step_and_frame() -> None:
    first = collate(step=3, frames=[0, 1, 0])
    assert first.shape == (3, 24, 40, 3) and first.dtype == torch.uint8  # the size is kept (not square)
    torch.testing.assert_close(collate(step=3, frames=[0, 1, 0]), first, rtol=0, atol=0)  # a resumed run
    torch.testing.assert_close(first[2], first[0], rtol=0, atol=0)  # (seed, step, frame): batch-independent
    torch.testing.assert_close(collate(step=3, frames=[1])[0], first[1], rtol=0, atol=0)
    later = collate(step=4, frames=[0, 1])
    other_seed = collate(step=3, frames=[0, 1], seed=1)
    for i in (0, 1):
        assert not torch.equal(later[i], first[i])  # a new step, a new draw
        assert not torch.equal(other_seed[i], first[i])
    raw = torch.from_numpy(Frames(24, 40)[0].image)
    assert not torch.equal(first[0], raw)  # augmented at all
