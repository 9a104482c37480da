"""save_backbone / load_backbone: round trip, fingerprint checks, atomic replacement under SIGKILL."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from transformers import LlamaTokenizer

import llm_backbones
from llm_backbones import _fs, get_llm_backbone_and_tokenizer, load_backbone, save_backbone
from llm_backbones.errors import CheckpointError, FingerprintMismatchError, ModelPathError
from shared import padded_llama2_tokenizer

pytestmark = pytest.mark.integration

SRC = Path(llm_backbones.__file__).resolve().parents[1]
PROMPT = "In: What action should the robot take to pick up the red block?\nOut:"


@pytest.fixture(scope="module")
def trained():
    """The tiny default with its last layer changed, so it differs from the seed-0 weights on disk."""
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    with torch.no_grad():
        backbone.llm.model.layers[-1].mlp.up_proj.weight.mul_(1.5)
    backbone.eval()
    return backbone, tokenizer


@pytest.fixture
def saved(trained, tmp_path) -> Path:
    return save_backbone(trained[0], tmp_path / "ckpt")


def _logits_and_generation(backbone, tokenizer) -> tuple[torch.Tensor, list[int]]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    backbone.eval()
    with torch.no_grad():
        logits = backbone(input_ids=ids).logits
        generated = backbone.llm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return logits, generated[0].tolist()


def _digest(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


# === Round trip ===
def test_files_and_fingerprint(saved) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json", "fingerprint.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    fp = json.loads((saved / "fingerprint.json").read_text())
    assert fp["backbone_id"] == "llama2-tiny-pure" and fp["family"] == "llama2"
    assert (fp["base_vocab_size"], fp["tokenizer_size"], fp["padded_vocab_size"]) == (32000, 32001, 32064)
    assert fp["special_token_ids"] == {"bos": 1, "eos": 2, "pad": 32000, "unk": 0}
    assert fp["prompt_format"] == "pure" and fp["prompt_builder"] == "PurePromptBuilder"
    assert fp["probe_prompt"] == (
        "In: What action should the robot take to pick up the red block?\nOut: Move left.</s>"
        "In: And then?\nOut:"
    )
    assert fp["probe_input_ids"][:4] == [1, 512, 29901, 1724]  # <s> "▁In" ":" "▁What"
    assert len(fp["tokenizer_sha256"]) == 64 and fp["dtype"] == "float32"
    assert set(fp["versions"]) == {"llm_backbones", "transformers", "torch"}
    assert not list(saved.parent.glob(".ckpt.*"))  # no temporary directory left behind


@pytest.mark.parametrize("inference_mode", [False, True], ids=["training", "inference"])
def test_round_trip_gives_identical_logits_and_generations(trained, saved, inference_mode) -> None:
    backbone, tokenizer = load_backbone(saved, inference_mode=inference_mode)
    assert backbone.inference_mode is inference_mode
    # a padded checkpoint loads back with the same shapes: no second PAD, no second resize
    assert len(tokenizer) == 32001 and tokenizer.pad_token_id == 32000
    assert backbone.llm.get_input_embeddings().weight.shape == (32064, 128)
    assert backbone.llm.lm_head.weight.shape == (32064, 128)
    assert {p.device.type for p in backbone.parameters()} == {"cpu"}
    want_logits, want_tokens = _logits_and_generation(*trained)
    got_logits, got_tokens = _logits_and_generation(backbone, tokenizer)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)
    assert got_tokens == want_tokens


def test_saved_dtype_is_the_default_and_can_be_overridden(trained, tmp_path) -> None:
    half, _ = load_backbone(save_backbone(trained[0], tmp_path / "a"), dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    again, _ = load_backbone(save_backbone(half, tmp_path / "b"))  # saved in bf16, loads in bf16
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}


def test_saved_llm_max_length_is_the_default(tmp_path) -> None:
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure", llm_max_length=512)
    loaded, tokenizer = load_backbone(save_backbone(backbone, tmp_path / "c"), inference_mode=True)
    assert loaded.llm_max_length == 512 and tokenizer.model_max_length == 512
    _, tokenizer = load_backbone(tmp_path / "c", inference_mode=True, llm_max_length=4096)
    assert tokenizer.model_max_length == 4096


def test_overwrite_replaces_the_checkpoint(trained, saved) -> None:
    backbone, _ = load_backbone(saved)
    with torch.no_grad():
        backbone.llm.lm_head.weight.add_(1.0)
    save_backbone(backbone, saved)
    reloaded, _ = load_backbone(saved)
    torch.testing.assert_close(
        reloaded.llm.lm_head.weight, trained[0].llm.lm_head.weight + 1.0, rtol=0, atol=0
    )
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]


def test_overwrite_without_atomic_exchange(trained, saved, monkeypatch) -> None:
    # Where renameat2(RENAME_EXCHANGE) is unavailable: two renames, and nothing left behind.
    monkeypatch.setattr(_fs, "exchange", lambda a, b: False)
    save_backbone(trained[0], saved)
    assert load_backbone(saved)[0].identifier == "llama2-tiny-pure"
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]


@pytest.mark.parametrize(
    ("writer", "fault"),
    [
        (
            "transformers.modeling_utils.safe_save_file",
            SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
        ),
        ("llm_backbones.persistence.checkpoint._write_tokenizer", OSError(errno.ENOSPC, "No space left")),
    ],
    ids=["weights", "tokenizer"],
)
def test_a_full_disk_keeps_the_previous_checkpoint(trained, saved, monkeypatch, writer, fault) -> None:
    before = _digest(saved)

    def full(*args, **kwargs):
        raise fault

    monkeypatch.setattr(writer, full)
    with pytest.raises(CheckpointError, match="the disk is full") as info:
        save_backbone(trained[0], saved)
    assert str(saved) in str(info.value) and "Nothing was lost" in str(info.value)
    assert _digest(saved) == before  # the previous checkpoint, byte for byte
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]  # no partial copy left beside it


def test_interrupted_swap_is_named_by_load(saved) -> None:
    # The moment between the two renames of the fallback: the previous checkpoint sits at a backup name.
    backup = saved.parent / ".ckpt.old-1a2b3c4d"
    saved.rename(backup)
    with pytest.raises(ModelPathError, match="is not a directory") as info:
        load_backbone(saved)
    assert str(backup) in str(info.value) and "rename it to" in str(info.value)


# === Fingerprint mismatches ===
def _metaspace_tokenizer(directory: Path) -> None:
    """transformers 5's LlamaTokenizer pipeline over the same vocabulary (another pre-tokenizer)."""
    padded_llama2_tokenizer(LlamaTokenizer).save_pretrained(directory)


def _extra_token_tokenizer(directory: Path) -> None:
    _, tok = load_backbone(directory)
    tok.add_tokens(["<ACTION>"])
    tok.save_pretrained(directory)


@pytest.mark.parametrize(
    ("swap", "fields"),
    [
        (_metaspace_tokenizer, {"tokenizer_sha256"}),
        (_extra_token_tokenizer, {"tokenizer_size", "tokenizer_sha256"}),
    ],
    ids=["other-pretokenizer", "added-token"],
)
def test_other_tokenizer_is_refused(saved, swap, fields) -> None:
    swap(saved)
    with pytest.raises(FingerprintMismatchError, match="another tokenizer") as info:
        load_backbone(saved)
    assert fields <= set(info.value.mismatches)
    assert "ignore_fingerprint=True" in str(info.value) and str(saved) in str(info.value)


def test_other_prompt_format_is_refused_unless_ignored(saved, caplog) -> None:
    with pytest.raises(FingerprintMismatchError, match="another prompt format") as info:
        load_backbone(saved, llm_backbone_id="llama2-7b-chat")
    assert info.value.mismatches["prompt_format"] == ("pure", "llama2-chat")
    assert "probe_prompt" in info.value.mismatches
    assert "saved 'pure', built 'llama2-chat'" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        backbone, _ = load_backbone(saved, llm_backbone_id="llama2-7b-chat", ignore_fingerprint=True)
    assert backbone.identifier == "llama2-7b-chat"
    assert any("ignored: ignore_fingerprint=True" in r.getMessage() for r in caplog.records)


def test_the_prompt_format_trained_with_is_recorded_and_restored(tmp_path) -> None:
    # A backbone used with the original Prismatic strings (as OpenVLA-era checkpoints were trained) records
    # that rendering, not the id's default, and loads with it.
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure", prompt_format="llama2-chat-prismatic")
    path = save_backbone(backbone, tmp_path / "compat")
    fingerprint = json.loads((path / "fingerprint.json").read_text())
    assert fingerprint["prompt_format"] == "llama2-chat-prismatic"
    assert fingerprint["probe_prompt"].startswith(
        "[INST] <<SYS>\nYou are a helpful language and vision assistant."
    )
    loaded, _ = load_backbone(path)
    assert loaded.prompt_format == "llama2-chat-prismatic"
    builder = loaded.prompt_builder_fn("openvla")
    builder.add_turn("human", "Hi.")
    assert builder.get_prompt().startswith("[INST] <<SYS>\n")  # the original's one-">" typo
    plain, _ = load_backbone(path, prompt_format="llama2-chat", ignore_fingerprint=True)
    assert plain.prompt_format == "llama2-chat"


def test_resized_vocabulary_is_refused(saved) -> None:
    backbone, _ = load_backbone(saved)
    backbone.llm.resize_token_embeddings(32128)  # someone resized and re-saved the weights only
    backbone.llm.save_pretrained(saved)
    with pytest.raises(FingerprintMismatchError, match="other padding") as info:
        load_backbone(saved)
    assert info.value.mismatches == {"padded_vocab_size": (32064, 32128)}


def test_same_prompt_format_under_another_id_loads_with_a_warning(saved, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        backbone, _ = load_backbone(saved, llm_backbone_id="llama2-7b-pure")
    assert backbone.identifier == "llama2-7b-pure"
    assert any("saved as 'llama2-tiny-pure'" in r.getMessage() for r in caplog.records)


# === Killed saves ===
# The child loads the checkpoint, changes its weights and saves over it; `_write_weights` is wrapped to
# leave half of the new weights on disk and hang, as a save killed mid-write would.
CHILD = r"""
import sys, time
from pathlib import Path
import torch
from llm_backbones import load_backbone
from llm_backbones.persistence import checkpoint

path, mode = sys.argv[1], sys.argv[2]
backbone, _ = load_backbone(path)
with torch.no_grad():
    backbone.llm.lm_head.weight.add_(1.0)
write_weights = checkpoint._write_weights

def write_half_then_hang(backbone, directory):
    write_weights(backbone, directory)
    weights = Path(directory) / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    print("WRITING", directory, flush=True)
    time.sleep(600)

if mode == "hang":
    checkpoint._write_weights = write_half_then_hang
print("SAVING", flush=True)
checkpoint.save_backbone(backbone, path)
print("SAVED", flush=True)
"""


def _child(path: Path, mode: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        env=env,
        text=True,
    )


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the child process printed nothing in time"
    return proc.stdout.readline().strip()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and select on pipes are POSIX")
def test_save_killed_midway_leaves_the_previous_checkpoint(trained, saved, tmp_path, caplog) -> None:
    before = _digest(saved)
    proc = _child(saved, "hang", tmp_path / "child.log")
    try:
        assert _read_line(proc, 120) == "SAVING"
        line = _read_line(proc, 120)
        assert line.startswith("WRITING "), (tmp_path / "child.log").read_text()
        tmp = Path(line.removeprefix("WRITING "))
        assert tmp.parent == saved.parent and tmp.name.startswith(".ckpt.tmp-")
        assert (tmp / "model.safetensors").is_file()  # the new weights are half on disk...
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert _digest(saved) == before  # ...and the checkpoint is untouched
    backbone, _ = load_backbone(saved)
    torch.testing.assert_close(backbone.llm.lm_head.weight, trained[0].llm.lm_head.weight, rtol=0, atol=0)
    # The next save works and names the leftover of the killed one.
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        save_backbone(backbone, saved)
    assert any(str(tmp) in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_save_killed_as_soon_as_it_starts_writing(trained, saved, tmp_path) -> None:
    # No hook: SIGKILL the moment the temporary directory appears. Whatever the timing, the path holds a
    # complete checkpoint, the old one or the new one, never a mix.
    proc = _child(saved, "plain", tmp_path / "child.log")
    try:
        assert _read_line(proc, 120) == "SAVING"
        deadline = time.monotonic() + 60
        while (
            not list(saved.parent.glob(".ckpt.tmp-*")) and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.0005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    backbone, _ = load_backbone(saved)
    old = trained[0].llm.lm_head.weight
    got = backbone.llm.lm_head.weight
    assert torch.equal(got, old) or torch.equal(got, old + 1.0)
