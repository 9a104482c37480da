"""VLAPolicy beyond the golden values: batching, constrained decoding, OpenVLA's call shape, bad input.

The checkpoint is one of OpenVLA's own (tests/golden/fixtures/openvla_policy, rebuilt by
tests/vla_checkpoints.py): the single-tower CLIP one (quick_gelu override, resize-crop), the cheapest.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import openvla_reference_spec as spec
from llm_backbones.errors import ImageError, InputShapeError, NormStatsError
from llm_backbones.vla.loading import load_vla
from vla_checkpoints import write_hf_checkpoint

pytestmark = pytest.mark.integration

NAME = "clip-224-crop"
INSTRUCTIONS = [  # 8 of mixed lengths (prompts of 16 to 40 tokens)
    "move left",
    "pick up the red block",
    "put the spoon in the bowl and then close the microwave door after checking the oven",
    "Open the top drawer",
    "wipe",
    "place the carrot on the plate next to the yellow sponge",
    "stack the cups",
    "push the button",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_hf_checkpoint(NAME, tmp_path_factory.mktemp(NAME))


@pytest.fixture(scope="module")
def policy(checkpoint):
    return load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)


def images(n: int) -> list[np.ndarray]:
    return [spec.image(100 + i, *spec.IMAGE_SIZES[i % len(spec.IMAGE_SIZES)]) for i in range(n)]


def test_predict_actions_equals_predict_action_row_by_row(policy):
    lengths = {len(policy.prompt_ids(t)) for t in INSTRUCTIONS}
    assert len(lengths) >= 6  # mixed lengths: left padding is exercised
    batch = policy.predict_actions(images(8), INSTRUCTIONS, unnorm_key="bridge_orig")
    batch_tokens = policy.last_tokens.clone()
    assert batch.shape == (8, 7)
    same = [images(8)[i] for i in (0, 0)]  # a batch array [B, H, W, 3] is a batch too
    np.testing.assert_array_equal(
        policy.predict_actions(np.stack(same), INSTRUCTIONS[:2], unnorm_key="bridge_orig"),
        policy.predict_actions(same, INSTRUCTIONS[:2], unnorm_key="bridge_orig"),
    )
    for i, (image, text) in enumerate(zip(images(8), INSTRUCTIONS, strict=True)):
        single = policy.predict_action(image, text, unnorm_key="bridge_orig")
        assert torch.equal(policy.last_tokens[0], batch_tokens[i]), text
        np.testing.assert_array_equal(single, batch[i])


def test_openvla_call_shape_appends_29871(policy):
    """OpenVLA's processor output (ids ending in "Out:", no 29871) gives the action of (image, text)."""
    image, text = images(1)[0], "pick up the red block"
    ids = policy.tokenizer(spec.prompt(text), return_tensors="pt").input_ids
    assert ids[0, -1].item() == 29901  # ":" ; the 29871 is appended as OpenVLA's predict_action does
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": policy.process_images(image),
    }
    expected = policy.predict_action(image, text, unnorm_key="bridge_orig")
    np.testing.assert_array_equal(
        policy.predict_action(**inputs, unnorm_key="bridge_orig", do_sample=False), expected
    )
    with_sep = torch.cat([ids, torch.tensor([[29871]])], dim=1)
    inputs.update(input_ids=with_sep, attention_mask=torch.ones_like(with_sep))
    np.testing.assert_array_equal(policy.predict_action(**inputs, unnorm_key="bridge_orig"), expected)


def test_a_stray_argmax_is_masked_counted_and_logged_or_clipped_as_openvla(checkpoint, caplog):
    """EOS (2) made the argmax of the first step: the default keeps the action the action tokens give, and
    counts and logs the event; constrain_to_actions=False returns OpenVLA's clipped action."""
    policy = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    image, text = images(1)[0], "pick up the red block"
    before = policy.predict_action(image, text, unnorm_key="bridge_orig")
    first = int(policy.last_tokens[0, 0])
    logits = policy.first_step_logits(image, text)
    assert int(logits.argmax()) == first and logits[first] > 0
    head = policy.backbone.llm.lm_head.weight
    with torch.no_grad():
        head[2] = 2.0 * head[first]  # EOS's logit is now twice the chosen action token's
    assert int(policy.first_step_logits(image, text).argmax()) == 2
    with caplog.at_level(logging.WARNING, logger="llm_backbones.vla.policy"):
        masked = policy.predict_action(image, text, unnorm_key="bridge_orig")
    np.testing.assert_array_equal(masked, before)
    assert policy.stray_tokens >= 1
    assert any("action mask changed" in r.getMessage() and "</s>" in r.getMessage() for r in caplog.records)
    openvla = policy.predict_action(image, text, unnorm_key="bridge_orig", constrain_to_actions=False)
    assert int(policy.last_tokens[0, 0]) == 2
    # OpenVLA: 32000 - 2 - 1 = 31997 -> clipped to bin 254, centre 1 - 1/255; bridge_orig dim 0 spans
    # q01 -0.03 .. q99 0.03: 0.5 * (1.99607843 ) * 0.06 - 0.03
    assert openvla[0] == pytest.approx(0.029882352941176, abs=1e-12)


BAD_IMAGES = [
    (np.zeros((32, 32), dtype=np.uint8), ImageError, "H x W x 3"),
    (np.zeros((32, 32, 4), dtype=np.uint8), ImageError, "H x W x 3"),
    (np.zeros((3, 32, 32), dtype=np.uint8), ImageError, "moveaxis"),
    (np.zeros((32, 32, 3), dtype=np.int32), ImageError, "uint8"),
    (np.zeros((32, 32, 3), dtype=bool), ImageError, "uint8"),
    (np.full((32, 32, 3), 1.5, dtype=np.float32), ImageError, "[0, 1]"),
    (np.full((32, 32, 3), np.nan, dtype=np.float32), ImageError, "NaN"),
    ("camera.png", ImageError, "PIL image"),
    (None, ImageError, "PIL image"),
    (np.zeros((1, 2000, 3), dtype=np.uint8), ImageError, "camera frames"),  # resized, 2000x larger
    (np.zeros((10, 200, 3), dtype=np.uint8), ImageError, "at most 16x"),
]


@pytest.mark.parametrize(("image", "error", "words"), BAD_IMAGES)
def test_bad_images_raise_typed_errors(policy, image, error, words):
    with pytest.raises(error, match=None) as info:
        policy.predict_action(image, "pick up the block", unnorm_key="bridge_orig")
    assert words in str(info.value)


def test_float_images_in_range_are_the_uint8_image(policy):
    image = images(1)[0]
    assert torch.equal(policy.process_images(image.astype(np.float64) / 255.0), policy.process_images(image))


KEY = {"unnorm_key": "bridge_orig"}
IDS, SMALL, FULL = torch.tensor([[1, 2]]), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 224, 224)
# (method, positional arguments after the image, keywords, error, words of its message); "IMG" is an image
BAD_CALLS = [
    ("predict_action", ["IMG", ""], KEY, InputShapeError, "non-empty"),
    ("predict_action", ["IMG", "   "], KEY, InputShapeError, "non-empty"),
    ("predict_action", ["IMG", 5], KEY, InputShapeError, "non-empty string"),
    ("predict_action", ["IMG", "go " * 1000], KEY, InputShapeError, "2000"),
    ("predict_action", ["IMG", "go"], {"unnorm_key": "bridge"}, NormStatsError, "bridge_orig"),
    ("predict_action", ["IMG", "go"], {}, NormStatsError, "ambiguous"),
    ("predict_action", ["IMG", "go"], {**KEY, "do_sample": True}, InputShapeError, "greedy"),
    ("predict_action", ["IMG", "go"], {**KEY, "temperature": 0.5}, InputShapeError, "temperature"),
    ("predict_actions", [["IMG", "IMG"], ["go"]], KEY, InputShapeError, "one instruction per image"),
    ("predict_actions", ["IMG", "go"], KEY, InputShapeError, "list of images"),
    ("predict_actions", [[], []], KEY, InputShapeError, "at least one"),
    (
        "predict_action",
        [],
        {**KEY, "input_ids": IDS, "pixel_values": SMALL},
        ImageError,
        "[batch, 3, 224, 224]",
    ),
    ("predict_action", ["IMG", "go"], {"input_ids": IDS, "pixel_values": FULL}, InputShapeError, "not both"),
    (
        "predict_action",
        [],
        {**KEY, "input_ids": IDS.float(), "pixel_values": FULL},
        InputShapeError,
        "integer",
    ),
    ("predict_action", [], {**KEY, "input_ids": IDS[:, :0], "pixel_values": FULL}, InputShapeError, "BOS"),
    (
        "predict_action",
        [],
        {**KEY, "input_ids": IDS + 40000, "pixel_values": FULL},
        InputShapeError,
        "0..32000",
    ),
    (
        "predict_action",
        [],
        {**KEY, "input_ids": IDS, "attention_mask": torch.ones(1, 3), "pixel_values": FULL},
        InputShapeError,
        "attention_mask",
    ),
    ("predict_action", [], {**KEY, "input_ids": IDS, "pixel_values": [[0.0]]}, ImageError, "pixel_values"),
    ("predict_action", ["IMG", "go"], {**KEY, "constrain_to_actions": "no"}, InputShapeError, "'no'"),
    ("predict_action", ["IMG", "go"], {**KEY, "do_sample": 1}, InputShapeError, "do_sample=1"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "error", "words"), BAD_CALLS)
def test_bad_calls_raise_typed_errors(policy, method, args, kwargs, error, words):
    image = images(1)[0]

    def fill(value):
        if isinstance(value, list):
            return [fill(v) for v in value]
        return image if isinstance(value, str) and value == "IMG" else value

    with pytest.raises(error) as info:
        getattr(policy, method)(*fill(args), **kwargs)
    assert words in str(info.value)


def test_left_padded_rows_count_positions_from_their_first_token(policy):
    """RoPE positions of each left-padded row start at 0 at its BOS (pads at 0), as HF generate counts them:
    the position ids the LLM receives, read with a hook (the logits alone could not show a constant shift)."""
    seen = []

    def hook(module, args, kwargs):
        if kwargs.get("position_ids") is not None and kwargs.get("inputs_embeds") is not None:
            seen.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    handle = policy.backbone.llm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        policy.predict_actions(images(3), INSTRUCTIONS[:3], unnorm_key="bridge_orig")
    finally:
        handle.remove()
    positions, mask = seen[0]  # the prefill
    lengths = [int(n) for n in mask.sum(dim=1)]
    assert len(set(lengths)) == 3
    for row, n in enumerate(lengths):
        assert positions[row, -n:].tolist() == list(range(n))
        assert positions[row, :-n].eq(0).all()


def test_prepared_policy_falls_back_to_eager_for_unprepared_shapes(checkpoint):
    """A policy prepared for batch 1 (compiled path; the eager backend here, no GPU) answers a batch of 2
    by decoding it eagerly, with the actions of the unprepared policy."""
    from llm_backbones.runtime.generation import prepare_for_generation

    plain = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    expected = plain.predict_actions(images(2), INSTRUCTIONS[:2], unnorm_key="bridge_orig")
    prepared = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    prepare_for_generation(
        prepared.backbone.llm,
        batch_sizes=(1,),
        max_prompt_length=320,
        max_new_tokens=7,
        compile_backend="eager",
    )
    np.testing.assert_array_equal(
        prepared.predict_actions(images(2), INSTRUCTIONS[:2], unnorm_key="bridge_orig"), expected
    )
    single = prepared.predict_action(images(1)[0], INSTRUCTIONS[0], unnorm_key="bridge_orig")
    np.testing.assert_allclose(single, expected[0], atol=1e-12)


def test_a_config_with_an_unknown_resize_strategy_is_refused_naming_the_file(tmp_path):
    import json

    from llm_backbones.errors import VLACheckpointError

    directory = write_hf_checkpoint(NAME, tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "image_resize_strategy": "crop"}))
    with pytest.raises(VLACheckpointError) as info:
        load_vla(directory, vision_depth=spec.VISION_DEPTH)
    assert "image_resize_strategy='crop'" in str(info.value) and str(directory) in str(info.value)


def test_to_takes_a_dtype_alone_as_nn_module_does(checkpoint):
    """`policy.to(torch.float64)` casts every part (as `nn.Module.to(dtype)`), and stays where it is."""
    policy = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    assert policy.to(torch.float64) is policy
    assert {p.dtype for part in policy.modules() for p in part.parameters()} == {torch.float64}
    assert policy.device == torch.device("cpu")
    with pytest.raises(TypeError, match="two dtypes"):
        policy.to(torch.float32, torch.float16)
