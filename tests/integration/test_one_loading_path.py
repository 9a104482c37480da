"""What the one loading path (`core/backbones/files.py`) refuses, for every loader that calls it.

The tokenizer must fit the embedding; no stand-in tokenizer built from special tokens alone; a tokenizer
that asks for the checkpoint's own code is refused; no file under `model_path` may link out of it; a hub
failure reaches the caller without the hub's frames (which hold the token in their request headers).
"""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

import pytest

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.app.info import backbone_info
from llm_backbones.core.backbones import loading
from llm_backbones.errors import (
    ModelPathError,
    RemoteCodeError,
    TokenizerContractError,
    UnsafeFileError,
)

SECRET = "hf_SENTINELtoken0123456789abcdef"


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _cut_vocabulary(tokenizer_json: Path, pieces: int) -> None:
    """Keep the first `pieces` pieces of a BPE tokenizer.json (and the merges among them)."""
    tok = json.loads(tokenizer_json.read_text())
    vocab = {piece: i for piece, i in tok["model"]["vocab"].items() if i < pieces}
    merges = []
    for merge in tok["model"]["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    tok["model"]["vocab"], tok["model"]["merges"] = vocab, merges
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < pieces]
    tokenizer_json.write_text(json.dumps(tok))


# === The tokenizer fits the embedding ===
@pytest.mark.parametrize("inference_mode", [False, True])
def test_an_embedding_of_1000_rows_is_refused_not_resized(tiny_llama_dir, tmp_path, inference_mode) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "rows-1000")
    _edit_json(path / "config.json", vocab_size=1000)
    with pytest.raises(TokenizerContractError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, inference_mode=inference_mode)
    message = str(info.value)
    assert "has 32,001 pieces (with PAD)" in message and "has 1,000 rows" in message
    assert "31,001 more pieces than rows" in message and "at most 64 pieces more than rows" in message


def test_a_tokenizer_of_1000_pieces_against_32000_rows_is_refused(tiny_llama_dir, tmp_path) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "pieces-1000")
    _cut_vocabulary(path / "tokenizer.json", 1000)
    with pytest.raises(TokenizerContractError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, inference_mode=True)
    message = str(info.value)
    assert "has 1,001 pieces (with PAD)" in message and "has 32,000 rows" in message
    assert "30,999 rows no piece uses" in message and "at most 1024 spare rows" in message
    # `info` reads the same directory through the same check
    with pytest.raises(TokenizerContractError, match="30,999 rows no piece uses"):
        backbone_info("llama2-7b-pure", model_path=path)


def test_padded_embeddings_of_the_families_still_fit(tiny_family_model) -> None:
    """Phi-2's stand-in: 50,257 pieces in 51,200 rows (943 spare); Qwen2.5-7B: 151,665 in 152,064."""
    for backbone_id, name, rows in (("phi-2-3b", "phi", 51200), ("qwen2.5-7b-pure", "qwen2.5-7b", 152064)):
        backbone, tokenizer = get_llm_backbone_and_tokenizer(
            backbone_id, model_path=tiny_family_model(name), inference_mode=True
        )
        assert backbone.llm.get_input_embeddings().weight.shape[0] == rows


# === No stand-in tokenizer ===
def test_a_qwen_directory_without_tokenizer_json_is_refused(tiny_family_model, tmp_path) -> None:
    path = _copy(tiny_family_model("qwen2.5-small"), tmp_path / "qwen-no-tokenizer-json")
    (path / "tokenizer.json").unlink()
    with pytest.raises(ModelPathError) as info:
        get_llm_backbone_and_tokenizer("qwen2.5-0.5b-pure", model_path=path, inference_mode=True)
    message = str(info.value)
    assert "has no usable tokenizer: it holds ['config.json', 'generation_config.json'," in message
    assert "tokenizer.json | tokenizer.model | spiece.model | vocab.json + merges.txt | vocab.txt" in message
    assert "encodes every text to []" in message


# === Remote code is refused, not skipped ===
@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        (
            {"auto_map": {"AutoTokenizer": ["tokenization_arm.ArmTokenizer", None]}},
            "auto_map: {'AutoTokenizer'",
        ),
        ({"tokenizer_class": "ArmTokenizer"}, "tokenizer_class 'ArmTokenizer'"),
    ],
)
def test_a_tokenizer_of_remote_code_is_refused(tiny_llama_dir, tmp_path, fields, shown) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "remote")
    _edit_json(path / "tokenizer_config.json", **fields)
    with pytest.raises(RemoteCodeError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, inference_mode=True)
    assert shown in str(info.value) and "trust_remote_code=True" in str(info.value)
    with pytest.raises(RemoteCodeError):
        backbone_info("llama2-7b-pure", model_path=path)
    if "auto_map" in fields:  # asked for: the check lets it through (LLaMA-2 loads tokenizer.json as written)
        _, tokenizer = get_llm_backbone_and_tokenizer(
            "llama2-7b-pure", model_path=path, inference_mode=True, trust_remote_code=True
        )
        assert len(tokenizer) == 32001


def test_openvlas_processor_entry_is_not_a_tokenizer_of_remote_code(tiny_llama_dir, tmp_path) -> None:
    """openvla/openvla-7b's tokenizer_config.json names its processor's code in `auto_map` beside a plain
    `LlamaTokenizer`: loading the tokenizer runs none of it, so it loads without trust_remote_code."""
    path = _copy(tiny_llama_dir, tmp_path / "openvla-like")
    _edit_json(
        path / "tokenizer_config.json",
        auto_map={"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        processor_class="PrismaticProcessor",
        tokenizer_class="LlamaTokenizer",
    )
    _, tokenizer = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, inference_mode=True)
    assert len(tokenizer) == 32001


# === No file outside the checkpoint folder ===
def test_a_chat_template_linking_outside_is_refused(tiny_llama_dir, tmp_path) -> None:
    path = _copy(tiny_llama_dir, tmp_path / "ckpt")
    outside = tmp_path / "elsewhere.jinja"
    outside.write_text("{{ messages }}")
    (path / "additional_chat_templates").mkdir()
    (path / "additional_chat_templates" / "tool_use.jinja").symlink_to(outside)
    with pytest.raises(UnsafeFileError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, inference_mode=True)
    assert info.value.reason == "outside"
    assert f"{path}/additional_chat_templates/tool_use.jinja is a symlink" in str(info.value)
    assert str(outside) in str(info.value)
    with pytest.raises(UnsafeFileError):
        backbone_info("llama2-7b-pure", model_path=path)
    _, tokenizer = get_llm_backbone_and_tokenizer(
        "llama2-7b-pure", model_path=path, inference_mode=True, allow_external_files=True
    )
    assert len(tokenizer) == 32001


# === The hub token ===
class _FailingHub:
    """A hub download that fails the way huggingface_hub's does: its frame holds the request headers."""

    @staticmethod
    def from_pretrained(source, token=None, **kwargs):
        headers = {"authorization": f"Bearer {token}", "user-agent": "transformers"}  # noqa: F841
        raise OSError(f"401 Client Error: Unauthorized for url: https://huggingface.co/{source}/config.json")


def test_a_failed_hub_download_keeps_the_token_out_of_every_frame(monkeypatch) -> None:
    monkeypatch.setattr(loading, "AutoConfig", _FailingHub)
    with pytest.raises(ModelPathError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", hf_token=SECRET)
    exc = info.value
    assert "401 Client Error: Unauthorized" in str(exc)  # the facts stay in the message
    assert exc.__cause__ is None and exc.__context__ is None  # the chain is cut at the library's boundary
    text = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    assert "hf_token" in text  # the locals were captured...
    assert SECRET not in text and "Bearer" not in text  # ...and none holds the token
