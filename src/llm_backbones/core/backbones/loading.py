"""How a backbone's HF model and tokenizer are built: from a local directory, the embedded default or the hub.

`HFLoader` reads config.json, the tokenizer and the weights of one registry entry, with every check of
`files` before a file is opened and strict checks after; `select_attn_implementation` picks the attention
kernel; `load_tokenizer` loads a tokenizer as a backbone does (`llm-backbones info` reads it the same
way), and `as_llama_tokenizer_fast` gives a tokenizer loaded as written the class OpenVLA checks for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import cached_file

from llm_backbones import _args, _fs
from llm_backbones._redact import HubToken
from llm_backbones.core.backbones import files as _files
from llm_backbones.core.backbones.embedded import MODEL_BUILD_LOCK, embedded_model_dir
from llm_backbones.core.registry import BackboneSpec
from llm_backbones.errors import (
    ConfigMismatchError,
    LLMBackbonesError,
    MissingDependencyError,
    ModelPathError,
    ModelWeightsError,
    RemoteCodeError,
    TokenizerContractError,
    TokenizerFileError,
    UnsafeFileError,
)

try:  # huggingface_hub's validation error of transformers' typed configs (transformers >= 5.x)
    from huggingface_hub.errors import StrictDataclassError as _StrictDataclassError
except ImportError:  # pragma: no cover - an older huggingface_hub

    class _StrictDataclassError(Exception):  # type: ignore[no-redef]
        pass


logger = logging.getLogger(__name__)

# Files a tokenizer may be built from (named in the error when none works).
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
        "special_tokens_map.json",
        "spiece.model",
    }
)
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickler_reason(exc: BaseException) -> str:
    """The one line of torch's weights-only refusal that says what it refused."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].split(" Please use", 1)[0].split(" Check the documentation", 1)[0]
        return f"{marker}{reason}".strip()[:200]
    return _first_line(exc)[:200] if not isinstance(exc, EOFError) else "the file ends early"


def as_llama_tokenizer_fast(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The same tokenizer, pipeline untouched, as an instance of `LlamaTokenizerFast`.

    [Contract] OpenVLA's `predict_action` (and other LLaMA code) checks `isinstance(tokenizer,
    LlamaTokenizerFast)`. transformers 5's class rebuilds a Metaspace pipeline in its constructor that
    differs from tokenizer.json's on 15 of llama.cpp's 46 reference inputs, so the class is given to the
    tokenizer loaded as written: `LlamaTokenizerFast` adds a constructor and no other method, hence
    encoding, decoding and saving are exactly those of the tokenizer as loaded.
    """
    from transformers import LlamaTokenizerFast

    if isinstance(tokenizer, LlamaTokenizerFast):
        return tokenizer
    extra = set(vars(LlamaTokenizerFast)) - set(vars(type(tokenizer)))
    methods = sorted(
        name for name in extra if callable(vars(LlamaTokenizerFast)[name]) and name != "__init__"
    )
    if methods or not isinstance(tokenizer, LlamaTokenizerFast.__mro__[1]):
        raise TokenizerContractError(
            f"This transformers release's LlamaTokenizerFast defines {methods or 'another base class'}, so a "
            "tokenizer loaded from tokenizer.json cannot take its class without changing behaviour. Pin "
            "transformers to a 5.x release this library is tested with, or report it."
        )
    tokenizer.__class__ = LlamaTokenizerFast
    # the attributes its constructor sets, with the values that describe the loaded pipeline
    tokenizer.add_prefix_space, tokenizer.legacy = True, False
    tokenizer.use_default_system_prompt = False
    return tokenizer


def load_tokenizer(
    spec: BackboneSpec, source: str | Path, *, local: bool, **kwargs: Any
) -> PreTrainedTokenizerBase:
    """The tokenizer of `source` (a local directory, or a hub path when not `local`) exactly as a backbone of
    `spec` loads it, `kwargs` passed to `from_pretrained`.

    For a family with `spec.tokenizer_json_as_written` (LLaMA-2, Mistral) that is tokenizer.json as written,
    given the class `LlamaTokenizerFast` (`as_llama_tokenizer_fast`); for the others, or where there is no
    tokenizer.json, the class the tokenizer's config names (`AutoTokenizer`). The errors of `AutoTokenizer`
    (`OSError`, `ValueError`, `TypeError`: no usable tokenizer files) reach the caller as they are. A local
    directory's tokenizer files are checked first (`files.check_tokenizer_files`: `TokenizerFileError`, a
    `RemoteCodeError` unless `trust_remote_code=True` is among `kwargs`, `ModelPathError` without the files
    a whole tokenizer is built from).
    """
    if local:
        _files.check_tokenizer_files(Path(source), trust_remote_code=bool(kwargs.get("trust_remote_code")))
    try:
        return _load_tokenizer_as_written(spec, source, local=local, **kwargs)
    except Exception as exc:
        if (
            type(exc) is not Exception
        ):  # transformers' own errors (OSError, ValueError, ...) are handled above
            raise
        # tokenizers raises a bare Exception for a tokenizer.json of valid JSON but broken contents
        failure = TokenizerFileError(
            f"The tokenizer files of {source} cannot build a tokenizer: the tokenizers library refused "
            f"tokenizer.json ({' '.join(str(exc).split())[:200]}). The file is valid JSON, but its contents "
            "(the model, vocabulary or merges) are damaged or written for another tokenizers release. "
            "Restore "
            "it from the original checkpoint, or save the base model's tokenizer into the directory: "
            f"AutoTokenizer.from_pretrained(<base model>).save_pretrained({str(source)!r})."
        )
    raise failure  # outside the except block: no chain to the library's frames


def _load_tokenizer_as_written(
    spec: BackboneSpec, source: str | Path, *, local: bool, **kwargs: Any
) -> PreTrainedTokenizerBase:
    if spec.tokenizer_json_as_written and (not local or (Path(source) / "tokenizer.json").is_file()):
        # [Contract] the pipeline tokenizer.json declares, as transformers 4 loaded it for OpenVLA and
        # Prismatic: transformers 5's LlamaTokenizer class replaces it with a Metaspace pre-tokenizer that
        # tokenizes text after a leading space differently (15 of llama.cpp's 46 LLaMA reference inputs).
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(source, **kwargs)
        except (OSError, ValueError, TypeError) as exc:  # a hub repo without tokenizer.json
            logger.warning(
                "No tokenizer.json in %s (%s): loading its tokenizer class instead", source, _first_line(exc)
            )
        else:
            return as_llama_tokenizer_fast(tokenizer)
    return AutoTokenizer.from_pretrained(source, **kwargs)


# The package each attention kernel needs, and transformers' test that it can run here.
_KERNEL_PACKAGES = {
    "flash_attention_2": ("flash-attn", "is_flash_attn_2_available"),
    "flash_attention_3": ("flash-attn 3 (flash_attn_interface)", "is_flash_attn_3_available"),
    "flash_attention_4": ("flash-attn 4", "is_flash_attn_4_available"),
}


def check_attn_implementation(value: object) -> str | None:
    """`value` as an `attn_implementation`: None, a kernel transformers knows ("eager", "sdpa",
    "flash_attention_2", ..., or a hub kernel "org/repo"), else `ArgumentError` with the closest names; a
    flash-attention kernel whose package cannot run here raises `MissingDependencyError` naming it and the
    fix, before anything is loaded."""
    if value is None or (isinstance(value, str) and "/" in value):  # a hub kernel: transformers checks it
        return value
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    _args.check_choice(
        value,
        "attn_implementation",
        known,
        fix="Or leave it unset: the backbone then picks sdpa (flash-attention-2 with "
        "use_flash_attention_2=True where it can run).",
    )
    if value in _KERNEL_PACKAGES:
        import transformers.utils

        package, available = _KERNEL_PACKAGES[value]
        if not getattr(transformers.utils, available, lambda: False)():
            raise MissingDependencyError(
                f"attn_implementation={value!r} needs {package} on CUDA, which cannot run here (not "
                "installed, "
                f"or no CUDA device). Install it on a CUDA machine (pip install flash-attn "
                "--no-build-isolation), or pass attn_implementation='sdpa', or use_flash_attention_2=True "
                "(flash-attention-2 where it can run, sdpa otherwise)."
            )
    return str(value)


def select_attn_implementation(
    attn_implementation: str | None,
    use_flash_attention_2: bool,
    llm_cls: type[PreTrainedModel] | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """`attn_implementation` if given; else flash-attention-2 where it can run, otherwise sdpa — or eager
    for a model class that cannot run sdpa (Gemma-2: sdpa has no attention-logit softcapping).

    Logs one line saying which was chosen and why. Never fails because flash-attn is missing.
    """
    if attn_implementation is not None:
        choice, why = attn_implementation, "requested with attn_implementation="
    elif not use_flash_attention_2:
        choice, why = "sdpa", "use_flash_attention_2=False"
    elif not torch.cuda.is_available():
        choice, why = "sdpa", "flash-attention-2 was requested but CUDA is not available"
    elif dtype not in (torch.float16, torch.bfloat16):
        choice, why = (
            "sdpa",
            (
                f"flash-attention-2 was requested but the weights load in {dtype} (it runs in "
                "float16/bfloat16 only; pass dtype=torch.bfloat16)"
            ),
        )
    elif llm_cls is not None and not getattr(llm_cls, "_supports_flash_attn", True):
        choice, why = "sdpa", f"flash-attention-2 was requested but {llm_cls.__name__} does not support it"
    else:
        try:
            import flash_attn  # noqa: F401
        except Exception as exc:  # ImportError, or a broken CUDA build raising anything else
            choice, why = "sdpa", f"flash-attention-2 was requested but flash_attn does not import ({exc})"
        else:
            choice, why = "flash_attention_2", "use_flash_attention_2=True, CUDA and flash_attn available"
    if choice == "sdpa" and attn_implementation is None and llm_cls is not None:
        if not getattr(llm_cls, "_supports_sdpa", True):
            choice, why = "eager", f"{why}; {llm_cls.__name__} does not support sdpa"
    logger.info("Attention implementation: %s (%s)", choice, why)
    return choice


# One model construction at a time. While transformers builds or loads a model it swaps process-wide state
# (torch's default dtype, torch.nn.init's functions, PreTrainedModel.init_weights / tie_weights) and restores
# it afterwards, and `parameters_on_meta` wraps nn.Module.register_parameter. Builds in several threads would
# interleave those swaps and restore them out of order (leaving, say, every later nn.Linear on the meta
# device or torch.nn.init disabled for good), so constructing the model holds this lock (the one the embedded
# model's creation holds); reading the config and the tokenizer does not.
_BUILD_LOCK = MODEL_BUILD_LOCK


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every nn.Parameter of the calling thread on the meta device while buffers stay real.

    A model built under it costs neither memory nor random-init time; its non-persistent buffers (RoPE
    frequencies), which no checkpoint holds, are computed for real. `load_state_dict(assign=True)`
    then brings the weights. Thread-safe: it holds `_BUILD_LOCK`, parameters that other threads create
    meanwhile stay where they are, and nn.Module.register_parameter is the original again when it ends.
    """
    with _BUILD_LOCK:
        register = nn.Module.register_parameter
        owner = threading.get_ident()

        def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            if param is not None and param.device.type != "meta" and threading.get_ident() == owner:
                param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            register(module, name, param)

        nn.Module.register_parameter = register_on_meta
        try:
            yield
        finally:
            nn.Module.register_parameter = register


class HFLoader:
    """Builds the HF model and tokenizer of one registry entry (see `HFCausalLLMBackbone` for the options)."""

    def __init__(
        self, spec: BackboneSpec, identifier: str, *, llm_max_length: int, inference_mode: bool
    ) -> None:
        self.spec, self.identifier = spec, identifier
        self.llm_max_length, self.inference_mode = llm_max_length, inference_mode
        self.llm: PreTrainedModel
        self.tokenizer: PreTrainedTokenizerBase

    def load(
        self,
        model_path: str | Path | None,
        hf_token: HubToken | bool | None,
        *,
        attn_implementation: str | None,
        use_flash_attention_2: bool,
        dtype: torch.dtype,
        trust_remote_code: bool,
        allow_pickle: bool,
        strict: bool = True,
        allow_external_files: bool = False,
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and tokenizer (PAD set, embeddings sized, greedy generation forced)."""
        source, local = self._resolve_source(model_path)
        if local:  # before any file is read: each lies inside model_path and can be read
            _files.check_local_files(Path(source), allow_external=allow_external_files)
        hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if not local and hf_token is not None:
            # Only the hub needs it (a local directory never sees it), as a str whose repr is redacted.
            hub_kwargs["token"] = hf_token.for_hub() if isinstance(hf_token, HubToken) else hf_token
        config = self._load_config(source, local, hub_kwargs)
        expected = self.spec.llm_cls.config_class.model_type
        if config.model_type != expected:
            raise ConfigMismatchError(
                f"{source}/config.json is a {config.model_type!r} model, but backbone "
                f"{self.identifier!r} ({self.spec.llm_family}) needs {expected!r} "
                f"({self.spec.llm_cls.__name__}). Point model_path at a {expected} checkpoint, or use an id "
                "of that checkpoint's family."
            )

        # The weight files, checked (inside model_path, safetensors unless allowed) before anything is loaded.
        files = (
            None
            if self.inference_mode
            else self._weight_files(
                source,
                local,
                config,
                hub_kwargs,
                allow_pickle=allow_pickle,
                allow_external_files=allow_external_files,
            )
        )

        # [Contract] fast tokenizer, right padding (training collates right-padded batches).
        self.tokenizer = self._load_tokenizer(source, local, hub_kwargs)
        self._check_bos_contract()
        # A checkpoint saved after this (save_backbone) already has the PAD token: no second one, no resize.
        self._set_pad_token(source)
        where = f"{source}/config.json" if local else f"the config of {source!r}"
        _files.check_tokenizer_fits(
            len(self.tokenizer), config.vocab_size, tokenizer_from=source, rows_from=f"{where} (vocab_size)"
        )

        attn = select_attn_implementation(
            attn_implementation, use_flash_attention_2, self.spec.llm_cls, dtype
        )
        with _BUILD_LOCK:  # transformers swaps process-wide state while it builds a model (see _BUILD_LOCK)
            if self.inference_mode:
                # Size the embeddings the way the trained checkpoint was resized (same rule as below).
                config.vocab_size = self._embedding_rows(config.vocab_size)
                with parameters_on_meta():
                    self.llm = self.spec.llm_cls._from_config(config, attn_implementation=attn, dtype=dtype)
            else:
                self.llm = self._load_weights(
                    source,
                    local,
                    config,
                    hub_kwargs,
                    attn=attn,
                    dtype=dtype,
                    allow_pickle=allow_pickle,
                    strict=strict,
                    files=files,
                )
                rows = self.llm.get_input_embeddings().weight.shape[0]
                if self._embedding_rows(rows) != rows:
                    # [Contract] mean-initialised new rows, rows padded to a multiple of 64 (tensor cores). HF
                    # re-ties a tied LM head to the resized input embedding.
                    self.llm.resize_token_embeddings(
                        len(self.tokenizer), pad_to_multiple_of=self.spec.pad_to_multiple_of
                    )
        hub_kwargs.pop("token", None)  # the last hub call is done: drop it
        self.llm.config.pad_token_id = self.tokenizer.pad_token_id
        self.llm.config.use_cache = True
        self._force_greedy_generation(source)
        return self.llm, self.tokenizer

    # Settings that only matter when sampling; reset at load (HF's defaults apply if a caller samples).
    SAMPLING_SETTINGS: tuple[str, ...] = ("temperature", "top_p")

    def _force_greedy_generation(self, source: str) -> None:
        """[Contract] greedy decoding unless the caller asks for sampling, as the original (it passed
        `do_sample=False, temperature=1.0, top_p=1.0` to `from_pretrained`): a checkpoint whose
        generation_config.json turns sampling on (Llama-2's does) does not make `generate()` sample.
        `generate(do_sample=True, temperature=..., top_p=...)` still samples."""
        config = getattr(self.llm, "generation_config", None)
        if config is None:
            return
        if getattr(config, "do_sample", False):
            settings = ", ".join(f"{k}={getattr(config, k, None)}" for k in self.SAMPLING_SETTINGS)
            logger.info(
                "The generation config of %s turns sampling on (do_sample=True, %s); generation stays greedy "
                "(pass generate(do_sample=True, ...) to sample)",
                source,
                settings,
            )
        config.do_sample = False
        for name in self.SAMPLING_SETTINGS:
            setattr(config, name, None)

    # === Loading ===
    def _resolve_source(self, model_path: str | Path | None) -> tuple[str, bool]:
        """Where config, tokenizer and weights come from, and whether that is a local directory."""
        if model_path is not None:
            if not isinstance(model_path, (str, os.PathLike)):
                raise ModelPathError(
                    f"model_path must be a str or a path, got {type(model_path).__name__}: "
                    f"{model_path!r:.80}. Pass the local directory of an HF-format checkpoint."
                )
            path = Path(model_path).expanduser()
            try:
                path = _files.run_export(path)  # a fine-tuning run's folder: its export/
                is_dir = path.is_dir()
                if is_dir and not os.access(path, os.R_OK | os.X_OK):
                    raise PermissionError(path)
                has_config = is_dir and (path / "config.json").is_file()
            except PermissionError:
                raise ModelPathError(
                    f"model_path={str(path)!r} cannot be read (permission denied). Give this user access "
                    f"(chmod -R u+rX {str(path)!r}) or copy the checkpoint somewhere readable."
                ) from None
            if not is_dir:
                raise ModelPathError(
                    f"model_path={str(model_path)!r} is not a directory. Pass the local directory of an "
                    "HF-format checkpoint (config.json, tokenizer files, *.safetensors)."
                )
            if not has_config:
                raise ModelPathError(
                    f"model_path={str(path)!r} has no config.json, so it is not an HF-format checkpoint. "
                    "Point it at the directory that holds config.json (e.g. the output of save_pretrained)."
                )
            return str(path), True
        if self.spec.embedded is not None:
            return str(embedded_model_dir(self.spec.embedded)), True
        return self.spec.hf_hub_path, False

    def _hub_error(self, source: str, what: str, exc: BaseException) -> ModelPathError:
        return ModelPathError(
            f"Could not load the {what} of {self.identifier!r} from the hub path {source!r}: "
            f"{_first_line(exc)} Pass model_path= a local HF-format directory, or check the network and "
            "hf_token (gated repositories such as meta-llama need an accepted licence and a token)."
        )

    def _load_config(self, source: str, local: bool, hub_kwargs: dict[str, Any]) -> PretrainedConfig:
        # config.json inside the directory, a JSON object of possible sizes, before transformers divides by a
        # head count or a model allocates a size
        raw: dict[str, Any] = _files.read_config(Path(source)) if local else {}
        where = f"{source}/config.json" if local else f"the config of {source!r}"
        try:
            config = AutoConfig.from_pretrained(source, **hub_kwargs)
        except (
            ZeroDivisionError,
            TypeError,
            _StrictDataclassError,
        ) as exc:  # a field transformers' config rejects
            raise ConfigMismatchError(
                f"{where} is rejected by transformers ({' '.join(str(exc).split())[:240]}). Fix the field it "
                "names (the base model's config.json has the right value), or point model_path at the "
                "checkpoint's own directory."
            ) from exc
        except ValueError as exc:  # transformers: unknown model_type, custom code refused
            if "auto_map" in raw and not hub_kwargs["trust_remote_code"]:
                raise RemoteCodeError(
                    f"{source}/config.json declares its own code (auto_map: {raw['auto_map']!r:.120}) for "
                    f"model_type {raw.get('model_type')!r}. llm-backbones never runs a checkpoint's code "
                    f"unless asked: read the .py files in {source}, then pass trust_remote_code=True; or use "
                    "a checkpoint of a built-in architecture."
                ) from exc
            expected = self.spec.llm_cls.config_class.model_type
            raise ConfigMismatchError(
                f"{where} has model_type {raw.get('model_type', '<missing>')!r}, which transformers cannot "
                f"build ({_first_line(exc)}). Backbone {self.identifier!r} needs a "
                f"{expected!r} checkpoint: point model_path at one."
            ) from exc
        except OSError as exc:
            if local:
                raise ConfigMismatchError(f"{source}/config.json cannot be read: {exc}") from exc
            failure = self._hub_error(source, "config", exc)
        else:
            failure = None
        if failure is not None:  # raised outside the except block: no chain to the hub's frames
            raise failure
        if not local:  # a hub config, checked as a local one was before transformers read it
            _files.check_config_sizes(
                {k: v for k, v in config.to_dict().items() if k in _files.CONFIG_SIZE_BOUNDS}, where
            )
        return config

    def _load_tokenizer(
        self, source: str, local: bool, hub_kwargs: dict[str, Any]
    ) -> PreTrainedTokenizerBase:
        kwargs = {"model_max_length": self.llm_max_length, "padding_side": "right", **hub_kwargs}
        try:
            return load_tokenizer(self.spec, source, local=local, **kwargs)
        except LLMBackbonesError:  # a refused tokenizer file, or a tokenizer without the class contract
            raise
        except (OSError, ValueError, TypeError) as exc:  # transformers raises ValueError for missing files
            reason = _first_line(exc)
            failure = self._hub_error(source, "tokenizer", exc) if not local else None
        if failure is not None:  # raised outside the except block: no chain to the hub's frames
            raise failure
        found = sorted(p.name for p in Path(source).iterdir() if p.name in TOKENIZER_FILES)
        raise ModelPathError(
            f"{source} has no usable tokenizer (tokenizer files found: {found or 'none'}; {reason}). Copy "
            "the base model's tokenizer into it: "
            f"AutoTokenizer.from_pretrained(<base model>).save_pretrained({source!r})."
        )

    def _load_weights(
        self,
        source: str,
        local: bool,
        config: PretrainedConfig,
        hub_kwargs: dict[str, Any],
        *,
        attn: str,
        dtype: torch.dtype,
        allow_pickle: bool,
        strict: bool = True,
        files: _files.WeightFiles,
    ) -> PreTrainedModel:
        try:
            llm, info = self.spec.llm_cls.from_pretrained(
                source,
                config=config,
                attn_implementation=attn,
                dtype=dtype,
                # [Contract] safetensors only: unpickling an untrusted file can run arbitrary code.
                use_safetensors=None if allow_pickle else True,
                # [Contract] strict: what is missing, left over or of another shape is reported, and refused
                # below.
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **hub_kwargs,
            )
        except SafetensorError as exc:
            bad = _files.unreadable_safetensors(Path(source)) if local else []
            raise ModelWeightsError(
                f"The weights of {source} cannot be read ({exc}): "
                f"{'; '.join(bad) if bad else 'a safetensors file'} is truncated or corrupted (an "
                "interrupted download, copy or save). Copy or download the checkpoint again."
            ) from exc
        except (
            pickle.UnpicklingError,
            EOFError,
        ) as exc:  # allow_pickle: torch.load(weights_only=True) refused
            names = ", ".join(str(f) for f in files.files) or f"the pickle weights of {source}"
            raise ModelWeightsError(
                f"{names} cannot be loaded: allow_pickle=True loads pickle weights with "
                f"torch.load(weights_only=True) only (tensors and plain containers), and it refused the file "
                f"({_unpickler_reason(exc)}): the file holds other objects, or is truncated or corrupted. "
                "Where you trust it, convert it once (torch.load(file, weights_only=False), then "
                "model.save_pretrained(dir) writes model.safetensors); else copy the checkpoint again."
            ) from None
        except OSError as exc:
            if not local:
                failure = self._hub_error(source, "weights", exc)
            else:
                failure = self._local_weights_error(source, exc, allow_pickle=allow_pickle)
        else:
            failure = None
        if failure is not None:  # raised outside the except block: no chain to the hub's frames
            raise failure
        self._check_loading_info(info, source, files, strict=strict)
        _files.check_finite(
            llm.named_parameters(),
            source,
            file_of=lambda name: files.file_of(name) if files.files or files.weight_map else source,
            strict=strict,
        )
        return llm

    def _local_weights_error(self, source: str, exc: OSError, *, allow_pickle: bool) -> ModelPathError:
        pickles = sorted(p.name for p in Path(source).iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles and not allow_pickle:
            return ModelPathError(
                f"{source} holds only pickle weights ({', '.join(pickles)}); llm-backbones loads "
                "safetensors only, since unpickling an untrusted file can run code. Convert them "
                "(load once where you trust them, then model.save_pretrained(dir) writes "
                "model.safetensors), or pass allow_pickle=True if you trust the file."
            )
        return ModelPathError(
            f"{source} has no weights that can be loaded ({_first_line(exc)}). Expected "
            "model.safetensors (or model.safetensors.index.json and its shards); to build the "
            "architecture without weights pass inference_mode=True."
        )

    def _weight_files(
        self,
        source: str,
        local: bool,
        config: PretrainedConfig,
        hub_kwargs: dict[str, Any],
        *,
        allow_pickle: bool,
        allow_external_files: bool,
    ) -> _files.WeightFiles:
        """Every weight file `from_pretrained` will open, checked before it opens any (see
        `_files.weight_files`)."""
        if not local:
            return self._hub_weight_files(source, hub_kwargs, allow_pickle=allow_pickle)
        return _files.weight_files(
            Path(source),
            getattr(config, "transformers_weights", None),
            allow_pickle=allow_pickle,
            allow_external=allow_external_files,
        )

    def _hub_weight_files(
        self, source: str, hub_kwargs: dict[str, Any], *, allow_pickle: bool
    ) -> _files.WeightFiles:
        """For a hub path without `allow_pickle`: the shard names of its model.safetensors.index.json, refused
        unless they are safetensors files of the repository, before transformers downloads or opens one."""
        if allow_pickle:
            return _files.WeightFiles()
        try:
            index = cached_file(
                source,
                _files.SAFE_INDEX,
                token=hub_kwargs.get("token"),
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                _raise_exceptions_for_gated_repo=False,
            )
        except Exception:  # noqa: BLE001 - from_pretrained then reports what is wrong with the hub path
            return _files.WeightFiles()
        if index is None:
            return _files.WeightFiles()
        index = Path(index)
        weight_map = _files.read_index(index)
        for name in sorted(set(map(str, weight_map.values()))):
            if not _fs.is_inside(index.parent, name, follow_symlinks=False):
                raise UnsafeFileError(
                    f"The weights index of the hub path {source!r} names {name!r}, a path outside the "
                    "repository; it was not downloaded or opened. The index is corrupted or crafted: use "
                    "another revision of the repository, or download it and fix the index's weight_map.",
                    path=name,
                    reason="outside",
                )
            if not name.endswith(".safetensors"):
                raise UnsafeFileError(
                    f"The weights index of the hub path {source!r} names {name!r}, which is not a "
                    "safetensors file; it was not downloaded or opened. llm-backbones loads safetensors "
                    "only (unpickling can run code): use a repository revision with safetensors shards, or "
                    "pass allow_pickle=True to load pickles with torch.load(weights_only=True).",
                    path=name,
                    reason="pickle",
                )
        return _files.WeightFiles([], index, {str(k): str(v) for k, v in weight_map.items()})

    def _check_loading_info(
        self, info: Mapping[str, Any], source: str, files: _files.WeightFiles, *, strict: bool
    ) -> None:
        """Refuse weights of other shapes; refuse (or with `strict=False` log) missing or left-over
        tensors."""
        mismatched = sorted(info.get("mismatched_keys") or (), key=lambda item: item[0])
        if mismatched:
            shown = "; ".join(
                f"{name} is {list(saved)} in {files.file_of(name)}, the architecture needs {list(built)}"
                for name, saved, built in mismatched[:5]
            )
            raise ModelWeightsError(
                f"The weights of {source} do not fit the architecture its config.json describes "
                f"({len(mismatched)} tensors): {shown}{' ...' if len(mismatched) > 5 else ''}. config.json "
                "and the weights come from different models (or config.json was edited): restore the "
                "checkpoint's own config.json, or point model_path at the checkpoint these weights belong to."
            )
        where = ", ".join(str(f) for f in files.files[:3]) or source
        _files.report_mismatch(
            list(info.get("missing_keys") or ()),
            list(info.get("unexpected_keys") or ()),
            what=(
                f"The weights of {where} do not match the {self.spec.llm_cls.__name__} architecture of "
                f"{self.identifier!r}"
            ),
            fix="Point model_path at the complete checkpoint of this architecture (strict=False e.g. to "
            "train a new head)",
            strict=strict,
            then="the missing tensors would be randomly initialised",
        )

    def _set_pad_token(self, source: str) -> None:
        """Apply the spec's pad policy (see `BackboneSpec`): add `pad_token`, or reuse a reserved one."""
        pad = self.spec.pad_token
        if self.spec.pad_policy == "reuse":
            if pad not in self.tokenizer.get_vocab():
                raise TokenizerContractError(
                    f"Backbone {self.identifier!r} reuses the reserved token {pad!r} as PAD, but the "
                    f"tokenizer of {source} ({len(self.tokenizer)} tokens) has no such token. Point "
                    f"model_path at a {self.spec.llm_family} tokenizer, or register the id with "
                    "pad_policy='add' (a new token and, if needed, embedding rows)."
                )
            # [Contract] a token the vocabulary reserves for padding: no new token, no new embedding row.
            self.tokenizer.pad_token = pad
        else:
            # [Contract] the seed's: add a PAD token (a no-op where the tokenizer already has it).
            self.tokenizer.add_special_tokens({"pad_token": pad})

    def _embedding_rows(self, rows: int) -> int:
        return self.spec.embedding_rows(rows, len(self.tokenizer))

    def _check_bos_contract(self) -> None:
        bos = self.tokenizer.bos_token_id
        with_special = self.tokenizer("Test 123", add_special_tokens=True).input_ids
        without = self.tokenizer("Test 123", add_special_tokens=False).input_ids
        adds_bos = bos is not None and with_special[:1] == [bos] and without[:1] != [bos]
        if adds_bos != self.spec.adds_bos:
            raise TokenizerContractError(
                f"The tokenizer of {self.identifier!r} {'adds' if adds_bos else 'does not add'} BOS "
                f"(bos_token_id={bos}, 'Test 123' -> {with_special}), but its registry entry says "
                f"adds_bos={self.spec.adds_bos}. Check that model_path holds this family's tokenizer, or "
                "register the id with the right adds_bos."
            )
