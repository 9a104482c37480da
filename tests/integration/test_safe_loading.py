"""Safe loading: what reaches transformers (no remote code, safetensors only, the token only for the hub),
pickle weights only on request, and the hf_token in no log line, repr, exception text or saved file."""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from llm_backbones import get_llm_backbone_and_tokenizer, load_backbone, save_backbone
from llm_backbones._redact import REDACTED, redacting
from llm_backbones.core.backbones import loading as base
from llm_backbones.errors import LLMBackbonesError, ModelPathError

pytestmark = pytest.mark.integration

SENTINEL = "hf_SENTINELdoNotLeak0123456789abcdefXYZ"


class Recorder:
    """Wraps a from_pretrained so the test sees the keyword arguments transformers received."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        self.calls: list[tuple[str, dict]] = []
        original = getattr(owner, name)

        def record(source, *args, **kwargs):
            self.calls.append((str(source), dict(kwargs)))
            return original(source, *args, **kwargs)

        monkeypatch.setattr(owner, name, record)


# === What reaches transformers ===
def test_defaults_no_remote_code_safetensors_only_and_no_token_for_local_dirs(
    tiny_llama_dir, monkeypatch
) -> None:
    config = Recorder(monkeypatch, base.AutoConfig, "from_pretrained")
    # LLaMA-2 ids load tokenizer.json as written (PreTrainedTokenizerFast), other families via AutoTokenizer
    tokenizer = Recorder(monkeypatch, base.PreTrainedTokenizerFast, "from_pretrained")
    weights = Recorder(monkeypatch, LlamaForCausalLM, "from_pretrained")
    get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_llama_dir, hf_token=SENTINEL)
    for recorder in (config, tokenizer, weights):
        assert recorder.calls
        for _, kwargs in recorder.calls:
            assert kwargs["trust_remote_code"] is False
            assert "token" not in kwargs  # a local directory never sees the token
    assert weights.calls[0][1]["use_safetensors"] is True


def test_trust_remote_code_and_allow_pickle_only_when_passed(tiny_llama_dir, monkeypatch) -> None:
    weights = Recorder(monkeypatch, LlamaForCausalLM, "from_pretrained")
    with pytest.warns(UserWarning, match="allow_pickle=True") as warned:
        get_llm_backbone_and_tokenizer(
            "llama2-7b-pure", model_path=tiny_llama_dir, trust_remote_code=True, allow_pickle=True
        )
    assert "arbitrary code" in str(warned[0].message)
    ((_, kwargs),) = weights.calls
    assert kwargs["trust_remote_code"] is True and kwargs["use_safetensors"] is None


def test_hub_sources_get_the_token(monkeypatch) -> None:
    seen: list[dict] = []

    def fake(source, **kwargs):
        seen.append(kwargs)
        raise OSError("offline")

    monkeypatch.setattr(base.AutoConfig, "from_pretrained", fake)
    with pytest.raises(ModelPathError):
        get_llm_backbone_and_tokenizer("llama2-7b-pure", hf_token=SENTINEL)
    assert seen[0]["token"] == SENTINEL


def test_pickle_weights_load_only_with_allow_pickle(tiny_llama_dir, tmp_path) -> None:
    pickled = tmp_path / "bin"
    shutil.copytree(tiny_llama_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelPathError, match="allow_pickle=True"):
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=pickled)
    with pytest.warns(UserWarning, match="allow_pickle"):
        backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=pickled, allow_pickle=True)
    reference, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_llama_dir)
    torch.testing.assert_close(
        backbone.llm.model.norm.weight, reference.llm.model.norm.weight, rtol=0, atol=0
    )


def test_remote_code_never_runs_without_trust(tiny_llama_dir, tmp_path) -> None:
    custom = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my_arm_llm", auto_map={"AutoConfig": "configuration_arm.ArmConfig"})
    (custom / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (custom / "configuration_arm.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(LLMBackbonesError, match="trust_remote_code=True"):
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=custom)
    assert not marker.exists()


# === The token never shows ===
@pytest.fixture
def everything_logged(caplog):
    """Every log record at DEBUG, transformers' and huggingface_hub's included (they do not propagate by
    default), so the scan sees what any handler could see."""
    transformers.utils.logging.set_verbosity_debug()
    transformers.utils.logging.enable_propagation()
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    hub_logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    transformers.utils.logging.disable_propagation()
    transformers.utils.logging.set_verbosity_warning()
    hub_logger.setLevel(hub_level)


def _exception_text(exc: BaseException) -> str:
    return repr(exc) + "\n" + str(exc) + "\n" + "".join(traceback.format_exception(exc))


def _broken_dirs(tiny_llama_dir: Path, root: Path) -> dict[str, Path]:
    dirs = {"missing": root / "absent", "no-config": root / "empty"}
    dirs["no-config"].mkdir()
    for name in ("other-architecture", "truncated-weights", "no-tokenizer"):
        shutil.copytree(tiny_llama_dir, root / name)
        dirs[name] = root / name
    config = json.loads((dirs["other-architecture"] / "config.json").read_text())
    (dirs["other-architecture"] / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    weights = dirs["truncated-weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (dirs["no-tokenizer"] / "tokenizer.json").unlink()
    return dirs


def test_token_in_no_log_repr_error_or_file(
    tiny_llama_dir, tmp_path, everything_logged, monkeypatch, capfd
) -> None:
    texts: list[str] = []
    # Failing loads: bad local directories, an unknown id, the hub (offline), a bad checkpoint.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts = [
        lambda path=path: get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, hf_token=SENTINEL)
        for path in _broken_dirs(tiny_llama_dir, tmp_path).values()
    ]
    attempts += [
        lambda: get_llm_backbone_and_tokenizer("llama2-7b-puer", hf_token=SENTINEL),
        lambda: get_llm_backbone_and_tokenizer("llama2-7b-pure", hf_token=SENTINEL),  # hub, offline
        lambda: load_backbone(tmp_path / "empty", hf_token=SENTINEL),
    ]
    for attempt in attempts:
        with pytest.raises(LLMBackbonesError) as info:
            attempt()
        texts.append(_exception_text(info.value))
    # Succeeding loads: a local directory, the embedded default, a saved checkpoint.
    backbone, tokenizer = get_llm_backbone_and_tokenizer(
        "llama2-7b-pure", model_path=tiny_llama_dir, hf_token=SENTINEL
    )
    default, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure", hf_token=SENTINEL)
    saved = save_backbone(backbone, tmp_path / "ckpt")
    loaded, loaded_tokenizer = load_backbone(saved, hf_token=SENTINEL, inference_mode=True)
    for obj in (backbone, default, loaded):
        texts += [repr(obj), repr(vars(obj)), obj.llm.config.to_json_string(), repr(obj.get_tokenizer())]
        texts.append(repr(obj.get_tokenizer().init_kwargs))
    texts += [f.read_text(errors="replace") for f in saved.iterdir() if f.suffix != ".safetensors"]
    texts += [f.read_bytes().decode("latin-1") for f in saved.iterdir() if f.suffix == ".safetensors"]
    texts += [r.getMessage() for r in everything_logged.records]
    out, err = capfd.readouterr()
    texts += [out, err]

    assert len(attempts) == 8 and len(everything_logged.records) > 0
    leaks = [t[:200] for t in texts if SENTINEL in t]
    assert not leaks, leaks


def test_redaction_covers_what_libraries_might_log_or_raise(
    tiny_llama_dir, monkeypatch, everything_logged
) -> None:
    # Second line of defence: a library that logs or raises the token while the backbone loads.
    def leaky(source, **kwargs):
        logging.getLogger("transformers.fake").warning(
            "GET %s with Authorization: Bearer %s", source, SENTINEL
        )
        raise OSError(f"401 for token {SENTINEL}")

    monkeypatch.setattr(base.AutoConfig, "from_pretrained", leaky)
    with pytest.raises(ModelPathError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", hf_token=SENTINEL)
    text = _exception_text(info.value)
    assert SENTINEL not in text and REDACTED in text
    messages = [r.getMessage() for r in everything_logged.records]
    assert any("Bearer " + REDACTED in m for m in messages)
    assert not any(SENTINEL in m for m in messages)


def test_redacting_restores_logging_and_ignores_empty_tokens(caplog) -> None:
    factory = logging.getLogRecordFactory()
    with redacting(None), redacting(""):
        assert logging.getLogRecordFactory() is factory
    with caplog.at_level(logging.INFO), redacting("s3cret"):
        logging.getLogger("llm_backbones.test").info("token=%s", "s3cret")
    assert logging.getLogRecordFactory() is factory
    assert caplog.records[-1].getMessage() == f"token={REDACTED}"
