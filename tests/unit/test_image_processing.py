"""ImageProcessor beyond the golden pixel values (tests/golden/test_openvla_policy_golden.py): the letterbox
fill of a fused backbone, and preprocessor configs that cannot be OpenVLA's."""

from __future__ import annotations

import numpy as np
import pytest

from llm_backbones.errors import VLACheckpointError
from llm_backbones.vla.image_processing import ImageProcessor
from llm_backbones.vla.vision import get_vision_spec

# A wide image: its top rows become letterbox padding. The padded pixel's normalized value in the DINOv2
# channel 0 (mean 0.485, std 0.229): OpenVLA's HF processor pads with the LAST tower's mean for both towers
# (SigLIP: int(0.5 * 255) = 127); Prismatic's training transform pads each tower with its own mean
# (DINOv2: int(0.485 * 255) = 123). (x / 255 - 0.485) / 0.229 in float32:
HF_FILL_DINO0 = 0.0569397434592247  # 127
PRISMATIC_FILL_DINO0 = -0.011559266597032547  # 123
SIGLIP_FILL = -0.003921568393707275  # (127 / 255 - 0.5) / 0.5


@pytest.mark.parametrize(("prismatic", "dino0"), [(False, HF_FILL_DINO0), (True, PRISMATIC_FILL_DINO0)])
def test_fused_letterbox_fill_per_layout(prismatic, dino0):
    processor = ImageProcessor.from_vision_spec(
        get_vision_spec("dinosiglip-vit-so-224px"), "letterbox", prismatic=prismatic
    )
    image = np.full((32, 224, 3), 200, dtype=np.uint8)
    pixels = processor(image)
    assert pixels.shape == (1, 6, 224, 224)
    assert float(pixels[0, 0, 0, 0]) == pytest.approx(dino0, abs=1e-7)
    assert float(pixels[0, 3, 0, 0]) == pytest.approx(SIGLIP_FILL, abs=1e-7)


OPENVLA_CONFIG = {  # the shape of OpenVLA's preprocessor_config.json (siglip-vit-so400m, letterbox)
    "image_resize_strategy": "letterbox",
    "input_sizes": [[3, 224, 224]],
    "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None, "size": 224}],
    "tvf_crop_params": [{"output_size": [224, 224]}],
    "tvf_normalize_params": [{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "inplace": False}],
    "tvf_do_letterbox": True,
    "tvf_letterbox_fill": [127, 127, 127],
}


def test_openvla_config_reads():
    processor = ImageProcessor.from_preprocessor_config(OPENVLA_CONFIG)
    assert processor.letterbox_fills == ((127, 127, 127),)
    assert processor.image_size == 224


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("image_resize_strategy", "crop", "image_resize_strategy='crop'"),
        ("input_sizes", [], "input_sizes"),
        ("tvf_resize_params", [{"size": -3, "interpolation": 3}], "size=-3"),
        ("tvf_resize_params", [{"size": 224, "interpolation": 9}], "interpolation=9"),
        ("tvf_resize_params", [{"size": 224, "max_size": 300}], "max_size=300"),
        ("tvf_crop_params", [{"output_size": [224]}], "output_size"),
        ("tvf_normalize_params", [{"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}], "mean"),
        ("tvf_normalize_params", [{"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}], "std"),
        ("tvf_letterbox_fill", [127, 300, 127], "tvf_letterbox_fill"),
        ("tvf_do_letterbox", False, "tvf_do_letterbox=False"),
    ],
)
def test_configs_that_are_not_openvlas_raise(field, value, words):
    with pytest.raises(VLACheckpointError) as info:
        ImageProcessor.from_preprocessor_config({**OPENVLA_CONFIG, field: value}, source="ckpt/preprocessor")
    assert words in str(info.value) and "ckpt/preprocessor" in str(info.value)
