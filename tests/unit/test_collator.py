"""PaddedCollator takes OpenVLA's `PaddedCollatorForActionPrediction` call shape and does what it does.

OpenVLA (openvla/openvla c8f03f4, prismatic/util/data_utils.py): fields `model_max_length, pad_token_id,
padding_side="right", pixel_values_dtype=torch.float32`; right-pads ids with the pad id and labels with
-100, cuts both to `model_max_length`, stacks `pixel_values` (a tensor, or a dict of tensors), and passes
`dataset_name`s through as `dataset_names`.
"""

from __future__ import annotations

import pytest
import torch

from llm_backbones.data.examples import IGNORE_INDEX, PaddedCollator
from llm_backbones.errors import InputShapeError


def ex(ids, labels, **extra):
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **extra}


BATCH = [ex([1, 5, 6, 7], [-100, -100, 6, 7]), ex([1, 8], [-100, 8])]


def test_openvla_positional_call_shape() -> None:
    # PaddedCollatorForActionPrediction(model_max_length, pad_token_id, padding_side="right")
    collate = PaddedCollator(2048, 32000, "right")
    out = collate(BATCH)
    assert out["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 32000, 32000]]
    assert out["labels"].tolist() == [[-100, -100, 6, 7], [-100, 8, IGNORE_INDEX, IGNORE_INDEX]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_openvlas_class_name_is_the_same_collator() -> None:
    from llm_backbones import PaddedCollatorForActionPrediction

    out = PaddedCollatorForActionPrediction(2048, 32000, padding_side="right")(BATCH)
    assert out["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 32000, 32000]]


def test_openvla_keyword_call_shape() -> None:
    collate = PaddedCollator(
        model_max_length=2048, pad_token_id=0, padding_side="right", pixel_values_dtype=torch.bfloat16
    )
    assert collate(BATCH)["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]


def test_truncates_to_model_max_length() -> None:
    out = PaddedCollator(3, 32000)(BATCH)
    assert out["input_ids"].tolist() == [[1, 5, 6], [1, 8, 32000]]
    assert out["labels"].tolist() == [[-100, -100, 6], [-100, 8, IGNORE_INDEX]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_pixel_values_tensor_and_dataset_names_pass_through() -> None:
    pixels = [torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), -0.5)]
    batch = [
        ex([1, 2], [-100, 2], pixel_values=pixels[0], dataset_name="bridge"),
        ex([1], [1], pixel_values=pixels[1], dataset_name="fractal"),
    ]
    out = PaddedCollator(2048, 0)(batch)
    assert out["pixel_values"].shape == (2, 3, 2, 2)
    assert out["pixel_values"].dtype == torch.float32
    assert out["pixel_values"][0].unique().tolist() == [0.5]
    assert out["pixel_values"][1].unique().tolist() == [-0.5]
    assert out["dataset_names"] == ["bridge", "fractal"]


def test_pixel_values_dict_for_fused_vision_backbones() -> None:
    batch = [
        ex([1], [1], pixel_values={"dino": torch.zeros(3, 2, 2), "siglip": torch.ones(3, 4, 4)}),
        ex([1], [1], pixel_values={"dino": torch.ones(3, 2, 2), "siglip": torch.zeros(3, 4, 4)}),
    ]
    out = PaddedCollator(2048, 0, "right", torch.bfloat16)(batch)
    assert sorted(out["pixel_values"]) == ["dino", "siglip"]
    assert out["pixel_values"]["dino"].shape == (2, 3, 2, 2)
    assert out["pixel_values"]["siglip"].shape == (2, 3, 4, 4)
    assert out["pixel_values"]["dino"].dtype == torch.bfloat16
    assert out["pixel_values"]["dino"][1].unique().tolist() == [1.0]
    assert "dataset_names" not in out


def test_pixel_values_untouched_without_a_dtype() -> None:
    batch = [ex([1], [1], pixel_values=torch.zeros(2, dtype=torch.float16))]
    assert PaddedCollator(8, 0)(batch)["pixel_values"].dtype == torch.float16


def test_pad_to_multiple_of_is_keyword_only() -> None:
    out = PaddedCollator(None, 0, pad_to_multiple_of=8)(BATCH)
    assert out["input_ids"].shape == (2, 8)
    with pytest.raises(TypeError):
        PaddedCollator(None, 0, "right", None, 8)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"model_max_length": 0, "pad_token_id": 0},
            "model_max_length must be a positive integer or None, got 0",
        ),
        (
            {"model_max_length": 2048, "pad_token_id": -1},
            "pad_token_id must be a non-negative integer, got -1",
        ),
        ({"model_max_length": 2048, "pad_token_id": 0, "padding_side": "left"}, "padding_side='left'"),
        ({"model_max_length": 2048, "pad_token_id": 0, "pixel_values_dtype": "bf16"}, "got 'bf16'"),
    ],
)
def test_bad_settings_raise(kwargs, words) -> None:
    with pytest.raises(InputShapeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        PaddedCollator(**kwargs)


def test_an_example_without_an_image_in_a_vla_batch_raises() -> None:
    batch = [ex([1], [1], pixel_values=torch.zeros(3)), ex([1], [1])]
    with pytest.raises(InputShapeError, match=r"Examples \[1\] have no pixel_values"):
        PaddedCollator(8, 0)(batch)


def test_rows_that_truncation_leaves_unsupervised_are_logged_once(caplog) -> None:
    # Row 0 keeps its supervised tokens within 2 positions, row 1 (reply after position 2) loses them all.
    batch = [ex([1, 5, 6], [-100, 5, 6]), ex([1, 8, 9, 10], [-100, -100, 9, 10])]
    collate = PaddedCollator(2, 32000)
    with caplog.at_level("WARNING", logger="llm_backbones.data.examples"):
        out = collate(batch)
        collate(batch)
    assert out["labels"].tolist() == [[-100, 5], [-100, -100]]
    warnings = [r.getMessage() for r in caplog.records if "supervised token" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "1 of 2 examples" in warnings[0] and "rows [1]" in warnings[0] and "[4] tokens" in warnings[0]


def test_integer_ids_of_any_integer_dtype_are_taken() -> None:
    batch = [{"input_ids": torch.tensor([1, 5], dtype=torch.int32), "labels": [-100, 5]}]
    out = PaddedCollator(8, 32000)(batch)
    assert out["input_ids"].dtype == torch.long and out["input_ids"].tolist() == [[1, 5]]
