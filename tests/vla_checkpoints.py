"""The tiny OpenVLA checkpoints of tests/golden/fixtures/openvla_policy, rebuilt for the suite.

OpenVLA's own code wrote each checkpoint (scripts/make_openvla_fixtures.py, in a throw-away environment with
the versions it pins); what is committed is its config.json, preprocessor_config.json, the list of tensors
it saved (names, shapes) and its outputs. The values of every tensor follow one rule
(`openvla_reference_spec.weight(name, shape)`), so the suite writes the same checkpoint again here, in
OpenVLA's HF layout or as a Prismatic training checkpoint, and loads it with the library.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import openvla_reference_spec as spec
from llm_backbones.core.backbones.embedded import ASSETS_DIR
from shared import padded_llama2_tokenizer

FIXTURES = Path(__file__).parent / "golden" / "fixtures" / "openvla_policy"
HF_FILES = ("config.json", "preprocessor_config.json", "generation_config.json")


def fixture_dir(name: str) -> Path:
    return FIXTURES / name


def tensors_of(name: str) -> list[dict[str, Any]]:
    """[{name, shape, dtype}] of the checkpoint, as OpenVLA's save_pretrained wrote it."""
    return json.loads((fixture_dir(name) / "tensors.json").read_text())


def cases_of(name: str) -> list[dict[str, Any]]:
    return json.loads((fixture_dir(name) / "cases.json").read_text())


def state_of(name: str) -> dict[str, torch.Tensor]:
    """{HF OpenVLA name: tensor} of the checkpoint, from the rule."""
    return {
        t["name"]: torch.from_numpy(spec.weight(t["name"], tuple(t["shape"]), name)) for t in tensors_of(name)
    }


def write_hf_checkpoint(name: str, directory: Path) -> Path:
    """The checkpoint `name` in OpenVLA's HF layout (config, preprocessor config, safetensors, tokenizer)."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in HF_FILES:
        if (fixture_dir(name) / file).is_file():
            shutil.copyfile(fixture_dir(name) / file, directory / file)
    save_file(state_of(name), directory / "model.safetensors", metadata={"format": "pt"})
    padded_llama2_tokenizer().save_pretrained(directory)
    return directory


# OpenVLA's convert_openvla_weights_to_hf.py maps a Prismatic checkpoint's names to the HF layout's; the
# suite runs the map backwards (prismatic_keys.json, written by the fixture script from OpenVLA's code,
# lists what the Prismatic checkpoint holds)
def _hf_name(group: str, key: str, fused: bool) -> str:
    if group == "llm_backbone":
        return "language_model." + key.removeprefix("llm.")
    if group == "projector":
        index = key.split(".")[1]
        return f"projector.fc{ {'0': 1, '2': 2, '4': 3}[index] }.{key.split('.')[2]}"
    head, rest = key.split(".", 1)
    if not fused:
        return f"vision_backbone.{head}.{rest}"
    if rest.endswith(".gamma"):
        rest = rest[: -len("gamma")] + "scale_factor"
    tower = "featurizer" if head == "dino_featurizer" else "fused_featurizer"
    return f"vision_backbone.{tower}.{rest}"


def write_prismatic_checkpoint(name: str, run_dir: Path, base_vlm: str) -> Path:
    """The checkpoint `name` as a Prismatic VLA training run: config.json naming `base_vlm`,
    dataset_statistics.json, checkpoints/step-000100-epoch-00-loss=0.1000.pt; and the base LLM's config and
    tokenizer in run_dir/base (Prismatic takes them from the hub)."""
    keys = json.loads((fixture_dir(name) / "prismatic_keys.json").read_text())
    fused = json.loads((fixture_dir(name) / "config.json").read_text())["use_fused_vision_backbone"]
    hf = state_of(name)
    model = {group: {k: hf[_hf_name(group, k, fused)] for k in names} for group, names in keys.items()}
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"model": model}, run_dir / "checkpoints" / "step-000100-epoch-00-loss=0.1000.pt")
    (run_dir / "config.json").write_text(json.dumps({"vla": {"base_vlm": base_vlm}}))
    (run_dir / "dataset_statistics.json").write_text(json.dumps(spec.NORM_STATS))
    base = run_dir / "base"
    base.mkdir()
    config = json.loads((fixture_dir(name) / "config.json").read_text())["text_config"]
    # the base repo's config (meta-llama/Llama-2-7b-hf): 32,000 rows, no pad_token_id (the backbone adds PAD)
    base_config = {k: v for k, v in config.items() if k != "pad_token_id"}
    (base / "config.json").write_text(json.dumps({**base_config, "model_type": "llama", "vocab_size": 32000}))
    for file in ("tokenizer.json", "tokenizer_config.json"):  # the base repo's: no PAD (the backbone adds it)
        shutil.copyfile(ASSETS_DIR / "llama2-tiny" / file, base / file)
    return run_dir
