"""What `load_vla_backbone` refuses, and what still loads.

Files resolving outside the checkpoint folder are refused through the backbone loader's own check
(`files.contained`: `UnsafeFileError`, reason "outside"), while a hub cache's links into its blob store load;
NaN/inf LLM weights are refused by name (`NonFiniteWeightsError`); `n_action_bins` and `llm_max_length` are
checked, never replaced by a default; the action statistics are checked at load, before any weight is read;
errors from the backbone loader name the checkpoint, not the temporary folder its LLM config and tokenizer
pass through; the hf_token never shows in a traceback's local variables. The rows of the bad-input matrix
(tests/unit/test_bad_inputs.py, `VLA_FAULTS`) cover the settings that fail before a file is read.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_openvla_checkpoints import (
    NORM_STATS,
    TINY,
    assert_llm_equal,
    random_llm,
    tiny_tokenizer_and_shapes,
    write_hf_openvla,
    write_prismatic_run,
)
from test_strict_loading import SENTINEL, _locals_text

from llm_backbones.errors import (
    ConfigMismatchError,
    LLMBackbonesError,
    ModelPathError,
    ModelWeightsError,
    NonFiniteWeightsError,
    NormStatsError,
    TokenizerFileError,
    UnsafeFileError,
    VLACheckpointError,
)
from llm_backbones.persistence.openvla import load_vla_backbone

pytestmark = pytest.mark.integration

SHARD_1 = "model-00001-of-00002.safetensors"
TEMP_PREFIX = "llm-backbones-openvla-"  # the temporary folder the LLM's config and tokenizer pass through
# transformers 5 writes no special_tokens_map.json; OpenVLA's checkpoints (transformers 4) have one.
SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer_and_shapes()


def hf_checkpoint(tiny, directory: Path, seed: int, **kwargs) -> tuple[Path, dict[str, torch.Tensor]]:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, seed, torch.bfloat16)
    path = write_hf_openvla(directory, tokenizer, llm, **kwargs)
    (path / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP))
    return path, llm


def link_outside(directory: Path, name: str, outside: Path) -> Path:
    """Move `directory/name` to `outside/name` and leave a symlink to it in its place."""
    outside.mkdir(exist_ok=True)
    target = outside / name
    (directory / name).rename(target)
    (directory / name).symlink_to(target)
    return target


def chain_text(exc: BaseException) -> str:
    """The messages of `exc` and of every exception it was raised from or during."""
    parts, seen, current = [], set(), [exc]
    while current:
        e = current.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts.append(str(e))
        current += [e.__cause__, e.__context__]
    return "\n".join(parts)


# === Files resolving outside the checkpoint folder ===
@pytest.mark.parametrize(
    "name",
    [
        SHARD_1,
        "model.safetensors.index.json",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "dataset_statistics.json",
    ],
)
def test_hf_layout_refuses_a_file_linking_outside_and_loads_it_when_allowed(tiny, tmp_path, name) -> None:
    directory, llm = hf_checkpoint(tiny, tmp_path / "ckpt", 30)
    target = link_outside(directory, name, tmp_path / "elsewhere")
    with pytest.raises(UnsafeFileError, match="outside the checkpoint directory") as info:
        load_vla_backbone(directory)
    assert info.value.reason == "outside" and info.value.path == str(directory / name)
    assert str(target) in str(info.value) and "allow_external_files=True" in str(info.value)
    # every link under the folder is checked before any file is read (files.check_local_files), shards too
    assert f"{directory / name} is a symlink" in str(info.value)
    loaded = load_vla_backbone(directory, allow_external_files=True)
    assert_llm_equal(loaded, llm)


def test_links_into_a_blob_store_inside_the_folder_load(tiny, tmp_path) -> None:
    """Every file a link into `<checkpoint>/blobs/<sha256>`: all inside the folder's tree."""
    directory, llm = hf_checkpoint(tiny, tmp_path / "ckpt", 31)
    (directory / "blobs").mkdir()
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        blob = directory / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(blob)
        file.symlink_to(Path("blobs") / blob.name)
    loaded = load_vla_backbone(directory)
    assert_llm_equal(loaded, llm)
    assert loaded.norm_stats == NORM_STATS


def hub_snapshot(source: Path, cache: Path, repo: str) -> Path:
    """huggingface_hub's layout: models--org--name/snapshots/<rev>/<file> -> ../../blobs/<sha256>."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "c8f03f4"
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy2(file, blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snapshot


def test_a_hub_cache_snapshot_loads_and_its_links_stay_in_their_repository(tiny, tmp_path) -> None:
    directory, llm = hf_checkpoint(tiny, tmp_path / "ckpt", 32)
    snapshot = hub_snapshot(directory, tmp_path / "hub", "openvla/openvla-tiny")
    assert_llm_equal(load_vla_backbone(snapshot), llm)
    other = hub_snapshot(directory, tmp_path / "hub", "someone/else")
    (snapshot / SHARD_1).unlink()
    (snapshot / SHARD_1).symlink_to(other / SHARD_1)  # another repository's blob
    with pytest.raises(UnsafeFileError, match="outside the checkpoint directory"):
        load_vla_backbone(snapshot)


@pytest.mark.parametrize("name", ["checkpoint", "dataset_statistics.json", "config.json"])
def test_prismatic_run_refuses_a_file_linking_outside(tiny, tmp_path, name) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 33, torch.float32)
    run = write_prismatic_run(tmp_path / "run", {7: llm})
    [pt] = (run / "checkpoints").glob("*.pt")
    relative = f"checkpoints/{pt.name}" if name == "checkpoint" else name
    (tmp_path / "elsewhere" / "checkpoints").mkdir(parents=True)
    target = link_outside(run, relative, tmp_path / "elsewhere")
    with pytest.raises(UnsafeFileError, match="outside the checkpoint directory") as info:
        load_vla_backbone(run)
    assert info.value.path == str(run / relative) and str(target) in str(info.value)
    assert_llm_equal(load_vla_backbone(run, allow_external_files=True), llm)


# === Weights: NaN / inf refused by name ===
def test_hf_layout_refuses_nan_weights_naming_the_tensor_and_shard(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 34)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["language_model.model.norm.weight"]
    state = load_file(directory / shard)
    state["language_model.model.norm.weight"][[3, 7]] = torch.tensor(
        [math.nan, math.inf], dtype=torch.bfloat16
    )
    save_file(state, directory / shard, metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeightsError) as info:
        load_vla_backbone(directory)
    assert info.value.tensor == "language_model.model.norm.weight"
    assert info.value.file == str(directory / shard)
    assert "1 NaN and 1 infinite of 128 values" in str(info.value) and "Restore the file" in str(info.value)


def test_prismatic_refuses_inf_weights_naming_the_tensor(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 35, torch.float32)
    llm["lm_head.weight"][0, 0] = -math.inf
    run = write_prismatic_run(tmp_path / "run", {1: llm})
    [pt] = (run / "checkpoints").glob("*.pt")
    with pytest.raises(NonFiniteWeightsError) as info:
        load_vla_backbone(run)
    assert (info.value.tensor, info.value.file) == ("llm_backbone.llm.lm_head.weight", str(pt))
    assert "0 NaN and 1 infinite" in str(info.value)


# === Settings: checked, never replaced by a default ===
def test_n_action_bins_override_and_one_that_does_not_fit_the_vocabulary(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 36)
    loaded = load_vla_backbone(directory, n_action_bins=128)
    assert loaded.action_tokenizer.n_bins == 128 and loaded.action_tokenizer.token_id_range == (31872, 31999)
    config = json.loads((directory / "config.json").read_text())
    config["n_action_bins"] = 40000
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(VLACheckpointError) as info:
        load_vla_backbone(directory)
    message = str(info.value)
    assert f"{directory}/config.json: n_action_bins=40000 does not fit the tokenizer" in message
    assert "more tokens than the vocabulary has (32000)" in message and "256" in message


def test_a_missing_n_action_bins_is_openvlas_256_and_a_null_one_too(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 37)
    config = json.loads((directory / "config.json").read_text())
    del config["n_action_bins"]
    config["llm_max_length"] = None
    (directory / "config.json").write_text(json.dumps(config))
    loaded = load_vla_backbone(directory)
    assert loaded.action_tokenizer.n_bins == 256 and loaded.tokenizer.model_max_length == 2048


def test_prismatic_llm_max_length_from_the_run_config_is_checked(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    config = {"model": {"llm_backbone_id": TINY, "llm_max_length": 0}}
    run = write_prismatic_run(tmp_path / "run", {1: random_llm(shapes, 38, torch.float32)}, config=config)
    with pytest.raises(
        ConfigMismatchError, match=r"The run config of .*/run \(model\): llm_max_length=0 is not accepted"
    ):
        load_vla_backbone(run)
    assert load_vla_backbone(run, llm_max_length=512).tokenizer.model_max_length == 512


# === Action statistics: checked once, at load, before any weight is read ===
def test_bad_statistics_are_refused_at_load_before_the_weights_are_read(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    run = write_prismatic_run(tmp_path / "run", {1: random_llm(shapes, 39, torch.float32)})
    stats = json.loads(json.dumps(NORM_STATS))
    stats["fractal"]["action"]["mask"] = ["true", "true", "false"]
    (run / "dataset_statistics.json").write_text(json.dumps(stats))
    [pt] = (run / "checkpoints").glob("*.pt")
    pt.write_bytes(b"not a checkpoint")  # never opened: the statistics fail first
    with pytest.raises(NormStatsError) as info:
        load_vla_backbone(run)
    message = str(info.value)
    assert f"norm_stats['fractal']['action']['mask'] (in {run}/dataset_statistics.json)" in message
    assert "['true', 'true', 'false']" in message and "JSON true/false" in message


# === Errors name the checkpoint, not the temporary folder ===
def test_a_broken_tokenizer_file_is_named_in_the_checkpoint(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 40)
    (directory / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerFileError) as info:
        load_vla_backbone(directory)
    assert str(info.value).startswith(f"{directory}/tokenizer.json is not valid JSON")
    assert TEMP_PREFIX not in chain_text(info.value)


def test_an_unusable_tokenizer_names_the_checkpoint(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 41)
    (directory / "tokenizer.json").unlink()
    (directory / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ModelPathError) as info:
        load_vla_backbone(directory)
    assert str(info.value).startswith(f"{directory} has no usable tokenizer")
    assert f"save_pretrained({str(directory)!r})" in str(info.value)
    assert TEMP_PREFIX not in chain_text(info.value)


def test_a_text_config_out_of_bounds_names_the_checkpoints_config(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 42)
    config = json.loads((directory / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 10**6
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError) as info:
        load_vla_backbone(directory)
    assert str(info.value).startswith(
        f"{directory}/config.json (text_config): num_hidden_layers=1000000 is not accepted"
    )
    assert TEMP_PREFIX not in chain_text(info.value)


def test_a_loaded_checkpoint_keeps_no_temporary_path(tiny, tmp_path) -> None:
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 43)
    loaded = load_vla_backbone(directory)
    assert loaded.tokenizer.name_or_path == str(directory)
    assert loaded.backbone.llm.config._name_or_path == str(directory)


# === The hf_token in no traceback's local variables ===
def test_load_vla_backbone_keeps_the_token_out_of_traceback_locals(tiny, tiny_llama_dir, tmp_path) -> None:
    tokenizer, shapes = tiny
    run = write_prismatic_run(tmp_path / "run", {1: random_llm(shapes, 44, torch.float32)})
    base = Path(shutil.copytree(tiny_llama_dir, tmp_path / "base"))
    (base / "tokenizer.json").write_text("{")  # fails inside the backbone loader, the token passed down
    directory, _ = hf_checkpoint(tiny, tmp_path / "ckpt", 45)
    (directory / SHARD_1).write_bytes((directory / SHARD_1).read_bytes()[:100])
    attempts = [
        (lambda: load_vla_backbone(run, base_model_path=base, hf_token=SENTINEL), TokenizerFileError),
        (lambda: load_vla_backbone(directory, hf_token=SENTINEL), ModelWeightsError),
    ]
    for attempt, error in attempts:
        with pytest.raises(LLMBackbonesError) as info:
            attempt()
        assert isinstance(info.value, error)
        text = _locals_text(info.value)
        assert "hf_token = HubToken(" in text or "'hf_token':" in text  # the locals were captured...
        assert SENTINEL not in text  # ...and none shows the token
