"""Nothing silent: what loading and checkpoints refuse, and what their opt-outs let through.

The error rows (typed error and its words) are in tests/unit/test_bad_inputs.py (`NOTHING_SILENT`); here are
the behaviours around them: `strict=False` and `allow_external_files=True` load what the default refuses, a
refused pickle is never opened, hub-cache snapshots still load, checkpoint hashes catch every flipped byte and
config edit, `save_backbone` writes through a symlink and keeps files it did not write, and the hf_token never
shows in a traceback printed with its frames' local variables.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from llm_backbones import get_llm_backbone_and_tokenizer, load_backbone, save_backbone
from llm_backbones._redact import REDACTED
from llm_backbones.core.backbones import loading as base
from llm_backbones.core.backbones.backbone import HFCausalLLMBackbone
from llm_backbones.errors import (
    FingerprintMismatchError,
    LLMBackbonesError,
    ModelPathError,
    ModelWeightsError,
    OutputPathError,
    StateDictMismatchError,
    UnsafeFileError,
)
from llm_backbones.persistence.checkpoint import FINGERPRINT_FILE, read_fingerprint, verify_files

pytestmark = pytest.mark.integration

SENTINEL = "hf_LOCALSsentinelDoNotLeak0123456789abcdef"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(path: Path, change) -> None:
    state = load_file(path / "model.safetensors")
    change(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


class Calls:
    """Records the calls of `owner.name` (and lets them through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        self.calls: list[tuple] = []
        original = getattr(owner, name)

        def record(*args, **kwargs):
            self.calls.append(args)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, record)


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    return get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_llama_dir)[0]


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory) -> Path:
    return save_backbone(reference, tmp_path_factory.mktemp("strict") / "ckpt")


# === Strict weights and their opt-out ===
def test_strict_false_trains_a_fresh_head_with_a_warning(tiny_llama_dir, reference, tmp_path, caplog) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "no-head")
    _edit_weights(path, lambda state: state.pop("lm_head.weight"))
    with pytest.raises(StateDictMismatchError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path)
    assert info.value.missing == ["lm_head.weight"] and info.value.unexpected == []
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, strict=False)
    assert any(
        "['lm_head.weight']" in r.getMessage() and "strict=False" in r.getMessage() for r in caplog.records
    )
    head = backbone.llm.lm_head.weight
    assert head.device.type == "cpu" and bool(torch.isfinite(head).all())
    assert not torch.equal(
        head[:32000], reference.llm.lm_head.weight[:32000]
    )  # freshly initialised, as asked
    torch.testing.assert_close(
        backbone.llm.model.norm.weight, reference.llm.model.norm.weight, rtol=0, atol=0
    )


def test_strict_false_inference_leaves_missing_tensors_on_meta(checkpoint, tmp_path, caplog) -> None:
    path = _copy(checkpoint, tmp_path / "ck")
    _edit_weights(path, lambda state: state.update({"model.norm.w": state.pop("model.norm.weight")}))
    with pytest.raises(StateDictMismatchError) as info:
        load_backbone(path, inference_mode=True, verify=False)
    assert (info.value.missing, info.value.unexpected) == (["model.norm.weight"], ["model.norm.w"])
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        backbone, _ = load_backbone(path, inference_mode=True, verify=False, strict=False)
    assert backbone.llm.model.norm.weight.device.type == "meta"
    assert backbone.llm.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    assert any("stay on the meta device" in r.getMessage() for r in caplog.records)


def test_strict_false_loads_non_finite_weights_with_a_warning(tiny_llama_dir, tmp_path, caplog) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "nan")

    def poison(state):
        state["model.norm.weight"] = state["model.norm.weight"].clone()
        state["model.norm.weight"][3] = float("nan")

    _edit_weights(path, poison)
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, strict=False)
    assert torch.isnan(backbone.llm.model.norm.weight[3])
    assert any("model.norm.weight" in r.getMessage() and "1 NaN" in r.getMessage() for r in caplog.records)


def test_a_tied_checkpoint_without_a_head_tensor_loads_strictly(tiny_family_model) -> None:
    path = tiny_family_model("gemma2")
    assert "lm_head.weight" not in load_file(
        path / "model.safetensors"
    )  # tied: saved once, as the input embedding
    backbone, _ = get_llm_backbone_and_tokenizer("gemma2-2b-pure", model_path=path)
    assert backbone.llm.lm_head.weight is backbone.llm.get_input_embeddings().weight


# === Safetensors only: a pickle an index names is never opened ===
def _index_to(path: Path, shard: str, tensors: dict) -> None:
    index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, shard)}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_a_pickle_named_by_the_index_is_never_opened(tiny_llama_dir, tmp_path, monkeypatch) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "pickled")
    state = load_file(path / "model.safetensors")
    torch.save(state, path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    _index_to(path, "pytorch_model.bin", state)
    loads = Calls(monkeypatch, torch, "load")
    weights = Calls(monkeypatch, LlamaForCausalLM, "from_pretrained")
    with pytest.raises(UnsafeFileError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path)
    assert info.value.reason == "pickle" and info.value.path == str(path / "pytorch_model.bin")
    assert loads.calls == [] and weights.calls == []  # refused before transformers (or torch) saw a file


@pytest.mark.parametrize(
    ("shard", "reason", "words"),
    [
        ("pytorch_model.bin", "pickle", "names 'pytorch_model.bin', which is not a safetensors file"),
        (
            "../../evil.safetensors",
            "outside",
            "names '../../evil.safetensors', a path outside the repository",
        ),
    ],
    ids=["pickle", "outside"],
)
def test_the_hub_index_is_checked_before_any_shard_is_downloaded(
    tiny_llama_dir, tmp_path, monkeypatch, shard, reason, words
) -> None:
    # A hub repository (faked: config and tokenizer come from the tiny directory) whose safetensors index
    # names a pickle, or a path outside the repository: refused before from_pretrained downloads or opens
    # anything, each with its own fix.
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": shard}}))
    for owner in (base.AutoConfig, base.PreTrainedTokenizerFast):
        real = owner.from_pretrained
        monkeypatch.setattr(
            owner,
            "from_pretrained",
            lambda source, *a, real=real, **kw: real(
                tiny_llama_dir, *a, **{k: v for k, v in kw.items() if k != "token"}
            ),
        )
    asked: list[tuple[str, str, object]] = []

    def fake_cached_file(repo, filename, **kwargs):
        asked.append((repo, filename, kwargs.get("token")))
        return str(index)

    monkeypatch.setattr(base, "cached_file", fake_cached_file)
    weights = Calls(monkeypatch, LlamaForCausalLM, "from_pretrained")
    with pytest.raises(UnsafeFileError, match=re.escape(words)) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", hf_token=SENTINEL)
    assert info.value.reason == reason
    assert ("allow_pickle=True" in str(info.value)) == (reason == "pickle")
    assert asked == [("meta-llama/Llama-2-7b-hf", "model.safetensors.index.json", SENTINEL)]
    assert weights.calls == []


# === Contained paths ===
def test_files_outside_load_only_with_allow_external_files(tiny_llama_dir, reference, tmp_path) -> None:
    """A symlink inside the folder pointing out is refused, and read with allow_external_files=True."""
    path = _copy(tiny_llama_dir, tmp_path / "model")
    (tmp_path / "elsewhere").mkdir()
    (path / "model.safetensors").rename(tmp_path / "elsewhere" / "x.safetensors")
    (path / "model.safetensors").symlink_to(tmp_path / "elsewhere" / "x.safetensors")
    with pytest.raises(UnsafeFileError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path)
    assert info.value.reason == "outside"
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, allow_external_files=True)
    # (rows 32000.. are the PAD rows, mean-initialised at random by each build)
    torch.testing.assert_close(
        backbone.llm.lm_head.weight[:32000], reference.llm.lm_head.weight[:32000], rtol=0, atol=0
    )


@pytest.mark.parametrize("allow_external_files", [False, True])
def test_an_index_naming_a_path_out_of_the_folder_is_refused(tiny_llama_dir, tmp_path, allow_external_files):
    """An index entry `../elsewhere/x.safetensors` is refused by name, even with allow_external_files=True
    (transformers 5.25 refuses it too): the same typed error whatever transformers does."""
    path = _copy(tiny_llama_dir, tmp_path / "model")
    state = load_file(path / "model.safetensors")
    (tmp_path / "elsewhere").mkdir()
    (path / "model.safetensors").rename(tmp_path / "elsewhere" / "x.safetensors")
    _index_to(path, "../elsewhere/x.safetensors", state)
    with pytest.raises(UnsafeFileError) as info:
        get_llm_backbone_and_tokenizer(
            "llama2-7b-pure", model_path=path, allow_external_files=allow_external_files
        )
    assert info.value.reason == "outside"
    assert "'../elsewhere/x.safetensors', a path outside the checkpoint directory" in str(info.value)
    assert "put a symlink to it there" in str(info.value)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_a_symlink_pointing_outside_is_refused_before_it_is_read(tiny_llama_dir, tmp_path, name) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "model")
    (tmp_path / "outside").mkdir()
    (path / name).rename(tmp_path / "outside" / name)
    (path / name).symlink_to(tmp_path / "outside" / name)
    with pytest.raises(UnsafeFileError) as info:
        get_llm_backbone_and_tokenizer(
            "llama2-7b-pure", model_path=path, inference_mode=name == "config.json"
        )
    assert f"{path / name} is a symlink" in str(info.value) and str(tmp_path / "outside" / name) in str(
        info.value
    )


def test_symlinks_inside_the_directory_and_a_symlinked_model_path_load(tiny_llama_dir, tmp_path) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "model")
    (path / "weights").mkdir()
    (path / "model.safetensors").rename(path / "weights" / "model.safetensors")
    (path / "model.safetensors").symlink_to(Path("weights") / "model.safetensors")
    (tmp_path / "latest").symlink_to(path)
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tmp_path / "latest")
    assert backbone.llm.lm_head.weight.device.type == "cpu"


def _hub_snapshot(tiny_llama_dir: Path, cache: Path, repo: str) -> Path:
    """The layout huggingface_hub downloads into: snapshots/<rev>/<file> -> ../../blobs/<sha256>."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "0123abcd"
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in tiny_llama_dir.iterdir():
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy2(file, blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snapshot


def test_a_hub_cache_snapshot_loads_and_its_links_stay_in_their_repository(tiny_llama_dir, tmp_path) -> None:
    snapshot = _hub_snapshot(tiny_llama_dir, tmp_path / "hub", "meta-llama/Llama-2-7b-hf")
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=snapshot)
    assert backbone.llm.lm_head.weight.device.type == "cpu"
    other = _hub_snapshot(tiny_llama_dir, tmp_path / "hub", "someone/else")
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(next((other.parents[1] / "blobs").iterdir()))
    with pytest.raises(UnsafeFileError, match="outside the checkpoint directory"):
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=snapshot)


# === Checkpoint hashes ===
def test_the_fingerprint_records_every_file_and_the_hashes_of_the_model_files(checkpoint) -> None:
    fp = read_fingerprint(checkpoint)
    assert fp["fingerprint_version"] == 3
    assert fp["files"] == sorted(p.name for p in checkpoint.iterdir() if p.name != FINGERPRINT_FILE)
    assert set(fp["file_sha256"]) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    for name, digest in fp["file_sha256"].items():
        assert digest == hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()


def test_twenty_random_byte_flips_in_the_weights_are_all_caught(checkpoint, tmp_path) -> None:
    path = _copy(checkpoint, tmp_path / "ck")
    saved = read_fingerprint(path)
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    header = 8 + int.from_bytes(original[:8], "little")  # flips land in the tensor data, as bit rot would
    rng = random.Random(13)
    caught = 0
    for offset in rng.sample(range(header, len(original)), 20):
        data = bytearray(original)
        data[offset] ^= 1 << rng.randrange(8)
        weights.write_bytes(data)
        with pytest.raises(FingerprintMismatchError) as info:
            verify_files(path, saved)
        assert "model.safetensors: sha256" in str(info.value)
        caught += set(info.value.mismatches) == {"file_sha256[model.safetensors]"}
    assert caught == 20
    weights.write_bytes(original)
    verify_files(path, saved)  # restored byte for byte: passes again


@pytest.mark.parametrize(
    "change",
    [
        {"rms_norm_eps": 1e-6},
        {"hidden_act": "gelu"},
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"tie_word_embeddings": True},
    ],
    ids=["rms_norm_eps", "hidden_act", "rope_scaling", "tie_word_embeddings"],
)
def test_config_edits_are_caught(checkpoint, tmp_path, change) -> None:
    # (load_backbone runs verify_files by default: the row "load-edited-config" of test_bad_inputs shows it)
    path = _copy(checkpoint, tmp_path / "ck")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(FingerprintMismatchError) as info:
        verify_files(path, read_fingerprint(path))
    assert set(info.value.mismatches) == {"file_sha256[config.json]"} and "verify=False" in str(info.value)


def test_verify_false_loads_an_edited_checkpoint(checkpoint, tmp_path) -> None:
    path = _copy(checkpoint, tmp_path / "ck")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    backbone, _ = load_backbone(path, inference_mode=True, verify=False)
    assert backbone.llm.config.rms_norm_eps == 1e-6


def test_an_edited_fingerprint_dtype_is_caught(checkpoint, tmp_path) -> None:
    path = _copy(checkpoint, tmp_path / "ck")
    fp = json.loads((path / FINGERPRINT_FILE).read_text())
    (path / FINGERPRINT_FILE).write_text(json.dumps({**fp, "dtype": "bfloat16"}))
    with pytest.raises(FingerprintMismatchError) as info:
        load_backbone(path, inference_mode=True)
    assert info.value.mismatches == {"dtype": ("bfloat16", "float32")}


def test_an_unrecorded_shard_is_caught(checkpoint, tmp_path) -> None:
    path = _copy(checkpoint, tmp_path / "ck")
    save_file({"extra": torch.zeros(2)}, path / "model-extra.safetensors")
    with pytest.raises(
        FingerprintMismatchError, match="model-extra.safetensors: not written by save_backbone"
    ):
        verify_files(path, read_fingerprint(path))


def test_a_checkpoint_without_hashes_is_refused_unless_verify_false(checkpoint, tmp_path) -> None:
    path = _copy(checkpoint, tmp_path / "v1")
    fp = json.loads((path / FINGERPRINT_FILE).read_text())
    for key in ("files", "file_sha256"):
        fp.pop(key)
    (path / FINGERPRINT_FILE).write_text(json.dumps({**fp, "fingerprint_version": 1}))
    with pytest.raises(FingerprintMismatchError) as info:
        load_backbone(path, inference_mode=True)
    assert "has no file_sha256 (fingerprint_version 1)" in str(info.value)
    assert "verify=False" in str(info.value) and info.value.mismatches == {"file_sha256": (None, "required")}
    backbone, _ = load_backbone(path, inference_mode=True, verify=False)  # loads, unverified, when asked
    assert all(p.device.type == "cpu" for p in backbone.parameters())


def test_a_swapped_tokenizer_vocabulary_is_refused(checkpoint, tmp_path) -> None:
    """Two pieces of tokenizer.json swap ids: the bytes differ from the recorded hash."""
    path = _copy(checkpoint, tmp_path / "swapped")
    tok = json.loads((path / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["▁the"], vocab["▁and"] = vocab["▁and"], vocab["▁the"]
    (path / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(FingerprintMismatchError) as info:
        load_backbone(path, inference_mode=True, ignore_fingerprint=True)
    assert "tokenizer.json: sha256" in str(info.value)
    assert set(info.value.mismatches) == {"file_sha256[tokenizer.json]"}


# === save_backbone: symlinks, files it did not write ===
def test_save_through_a_symlink_replaces_the_checkpoint_where_it_points(
    reference, checkpoint, tmp_path
) -> None:
    real = _copy(checkpoint, tmp_path / "runs" / "step-1")
    link = tmp_path / "latest"
    link.symlink_to(real)
    backbone = copy.deepcopy(reference)
    with torch.no_grad():
        backbone.llm.lm_head.weight.add_(1.0)
    assert save_backbone(backbone, link) == real.resolve()
    assert link.is_symlink() and link.resolve() == real.resolve()
    reloaded, _ = load_backbone(link)
    torch.testing.assert_close(
        reloaded.llm.lm_head.weight, reference.llm.lm_head.weight + 1.0, rtol=0, atol=0
    )
    assert sorted(p.name for p in real.parent.iterdir()) == ["step-1"]


@pytest.mark.parametrize("foreign", ["notes.txt", "optimizer/"])
def test_save_keeps_what_it_did_not_write(reference, checkpoint, tmp_path, foreign) -> None:
    path = _copy(checkpoint, tmp_path / "ck")
    if foreign.endswith("/"):
        (path / foreign).mkdir()
        (path / foreign / "state.pt").write_text("mine")
    else:
        (path / foreign).write_text("mine")
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(OutputPathError, match=f"did not write: {foreign}"):
        save_backbone(reference, path)
    assert sorted(p.name for p in path.rglob("*")) == before


# === Permissions (real ones: skipped as root, which may read and write anything) ===
needs_non_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root bypasses file permissions"
)


@needs_non_root
def test_unreadable_model_path_and_read_only_save_folder(tiny_llama_dir, reference, tmp_path) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "model")
    path.chmod(0)
    try:
        with pytest.raises(ModelPathError, match="permission denied"):
            get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path)
    finally:
        path.chmod(0o755)
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(OutputPathError, match="permission denied"):
            save_backbone(reference, folder / "ckpt")
    finally:
        folder.chmod(0o755)


# === The hf_token in no traceback's local variables ===
def _locals_text(exc: BaseException) -> str:
    from rich.console import Console
    from rich.traceback import Traceback

    text = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(
        Traceback.from_exception(
            type(exc),
            exc,
            exc.__traceback__,
            show_locals=True,
            locals_max_length=1000,
            locals_max_string=1000,
        )
    )
    return text + out.getvalue()


def _broken_weights(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    path = _copy(tiny_llama_dir, tmp_path / "broken")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return path


def test_local_loads_keep_the_token_out_of_traceback_locals(tiny_llama_dir, checkpoint, tmp_path) -> None:
    broken = _broken_weights(tiny_llama_dir, tmp_path)
    ck = _copy(checkpoint, tmp_path / "ck")
    (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:1000])
    attempts = [
        lambda: HFCausalLLMBackbone("llama2-7b-pure", hf_token=SENTINEL, model_path=broken),
        lambda: load_backbone(ck, hf_token=SENTINEL, inference_mode=True),
    ]
    for attempt in attempts:
        with pytest.raises(LLMBackbonesError) as info:
            attempt()
        text = _locals_text(info.value)
        assert "hf_token = HubToken(" in text or "'hf_token':" in text  # the locals were captured...
        assert SENTINEL not in text  # ...and none shows the token


def test_a_hub_failure_keeps_the_token_out_of_traceback_locals(monkeypatch) -> None:
    def fake(source, **kwargs):  # a library frame holding the token it was given, then failing
        token = kwargs["token"]
        assert token == SENTINEL  # the hub gets the real token
        raise OSError("401 Unauthorized")

    monkeypatch.setattr(base.AutoConfig, "from_pretrained", fake)
    with pytest.raises(ModelPathError) as info:
        HFCausalLLMBackbone("llama2-7b-pure", hf_token=SENTINEL)
    text = _locals_text(info.value)
    assert "token = " in text and REDACTED in text and SENTINEL not in text


def test_the_public_entry_point_keeps_the_token_out_of_traceback_locals(tiny_llama_dir, tmp_path) -> None:
    broken = _broken_weights(tiny_llama_dir, tmp_path)
    with pytest.raises(ModelWeightsError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", hf_token=SENTINEL, model_path=broken)
    assert SENTINEL not in _locals_text(info.value)
