"""The backbone interface (`LLMBackbone`) and its one HF implementation (`HFCausalLLMBackbone`).

`HFCausalLLMBackbone` does everything the original's family subclasses did (PAD token, embedding
resize, prompt builder, layer class, dtype, last-layer modules), driven by the id's registry entry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import cached_file

from llm_backbones._redact import HubToken, redacting
from llm_backbones.backbones import _loading
from llm_backbones.embedded import MODEL_BUILD_LOCK, embedded_model_dir
from llm_backbones.fused_loss import chunked_causal_lm_loss
from llm_backbones.generation import CACHE_KEYWORD, generate_greedy
from llm_backbones.errors import (
    ConfigMismatchError,
    ModelPathError,
    ModelWeightsError,
    NonFiniteWeightsError,
    PromptFormatError,
    RemoteCodeError,
    StateDictMismatchError,
    TokenizerContractError,
    UnsafeFileError,
)
from llm_backbones.prompting import PromptBuilder
from llm_backbones.registry import BackboneSpec, get_spec

try:  # huggingface_hub's validation error of transformers' typed configs (transformers >= 5.x)
    from huggingface_hub.errors import StrictDataclassError as _StrictDataclassError
except ImportError:  # pragma: no cover - an older huggingface_hub

    class _StrictDataclassError(Exception):  # type: ignore[no-redef]
        pass


logger = logging.getLogger(__name__)

# Files a tokenizer may be built from (named in the error when none works).
TOKENIZER_FILES = frozenset(
    {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
     "special_tokens_map.json", "spiece.model"}
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


def unreadable_safetensors(directory: Path) -> list[str]:
    """`"<file> (<n> bytes)"` for each *.safetensors file of `directory` whose header or extent is broken."""
    bad = []
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                list(handle.keys())
        except Exception:  # SafetensorError, OSError: either way the file cannot be used
            bad.append(f"{file} ({file.stat().st_size} bytes)")
    return bad


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
    methods = sorted(name for name in extra if callable(vars(LlamaTokenizerFast)[name]) and name != "__init__")
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


class LLMBackbone(nn.Module, ABC):
    """A causal LLM as the language half of a VLM/VLA: model, tokenizer, prompt format, FSDP unit."""

    def __init__(self, llm_backbone_id: str) -> None:
        super().__init__()
        self.identifier = llm_backbone_id
        # Set by subclasses
        self.llm: PreTrainedModel
        self.tokenizer: PreTrainedTokenizerBase

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        return self.tokenizer

    @abstractmethod
    def get_fsdp_wrapping_policy(self) -> Callable: ...

    @abstractmethod
    def enable_gradient_checkpointing(self) -> None: ...

    @abstractmethod
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast:
        """Run the wrapped LLM; same signature and result as the HF model's forward."""

    @abstractmethod
    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.Tensor: ...

    @property
    @abstractmethod
    def prompt_builder_fn(self) -> type[PromptBuilder]: ...

    @property
    @abstractmethod
    def transformer_layer_cls(self) -> type[nn.Module]: ...

    @property
    @abstractmethod
    def half_precision_dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def last_layer_finetune_modules(self) -> Sequence[nn.Module]: ...

    @property
    def embed_dim(self) -> int:
        return self.llm.config.hidden_size

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id


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
        choice, why = "sdpa", (
            f"flash-attention-2 was requested but the weights load in {dtype} (it runs in float16/bfloat16 "
            "only; pass dtype=torch.bfloat16)"
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
# it afterwards, and `_parameters_on_meta` wraps nn.Module.register_parameter. Builds in several threads would
# interleave those swaps and restore them out of order (leaving, say, every later nn.Linear on the meta
# device or torch.nn.init disabled for good), so constructing the model holds this lock (the one the embedded
# model's creation holds); reading the config and the tokenizer does not.
_BUILD_LOCK = MODEL_BUILD_LOCK


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
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


class HFCausalLLMBackbone(LLMBackbone):
    """A backbone over any HF causal LM, configured by its registry entry.

    Args:
        llm_backbone_id: a registered id (see `llm_backbones.registry`).
        llm_family, llm_cls, hf_hub_path: the original's explicit arguments; when given they override
            the registry entry.
        llm_max_length: the tokenizer's `model_max_length`.
        hf_token: hub token, passed to the hub only (never to a local directory), never stored, and kept
            out of log lines, exception messages and the local variables of the loading frames (it travels
            as a `HubToken`, whose repr is redacted, so a traceback printed with its locals does not show
            it).
        inference_mode: build the architecture on the meta device from the config only (no weights, no
            random init); load trained weights with `load_state_dict`. `use_cache=True`.
        use_flash_attention_2: prefer flash-attention-2 where it can run (see
            `select_attn_implementation`); `attn_implementation=` overrides.
        model_path: a local HF-format directory that replaces the hub path.
        dtype: the dtype of the loaded weights (default float32, as the original).
        trust_remote_code: passed to HF only when the caller sets it; a checkpoint that needs its own code
            raises `RemoteCodeError` otherwise.
        allow_pickle: also accept pickle weights (`pytorch_model.bin`), with a warning, loaded with
            `torch.load(weights_only=True)` (tensors and plain containers only: a pickle of other objects
            raises `ModelWeightsError`). By default weights load from safetensors only, since unpickling an
            untrusted file can run code: a pickle that an index names is refused before it is opened
            (`UnsafeFileError`).
        strict: every parameter of the architecture comes from the weights (tied ones aside), none of their
            tensors is left over, and none holds NaN/inf; else `StateDictMismatchError` (listing `missing`
            and `unexpected`) or `NonFiniteWeightsError`. `strict=False` turns those into warnings (missing
            parameters are then freshly initialised). Shapes that differ from config.json's always raise
            `ModelWeightsError`.
        allow_external_files: every file read from a local `model_path` (config, tokenizer, weights, the
            shards an index names) must resolve inside it, symlinks followed (a hub-cache snapshot's links
            into its own blob store count as inside); else `UnsafeFileError`. True lifts that check. Hub
            paths are downloaded by huggingface_hub into its cache and are not checked.
    """

    def __init__(
        self,
        llm_backbone_id: str,
        llm_family: str | None = None,
        llm_cls: type[PreTrainedModel] | None = None,
        hf_hub_path: str | None = None,
        llm_max_length: int = 2048,
        hf_token: str | HubToken | None = None,
        inference_mode: bool = False,
        use_flash_attention_2: bool = False,
        *,
        model_path: str | Path | None = None,
        attn_implementation: str | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        strict: bool = True,
        allow_external_files: bool = False,
    ) -> None:
        hf_token = HubToken.wrap(hf_token)  # first: from here on no frame of the load holds the plain token
        super().__init__(llm_backbone_id)
        self.fused_loss = False
        overrides = {"family": llm_family, "llm_cls": llm_cls, "hf_hub_path": hf_hub_path}
        self.spec: BackboneSpec = replace(
            get_spec(llm_backbone_id), **{k: v for k, v in overrides.items() if v is not None}
        )
        self.llm_family, self.hf_hub_path = self.spec.family, self.spec.hf_hub_path
        self.llm_max_length, self.inference_mode = llm_max_length, inference_mode
        if allow_pickle:
            warnings.warn(
                f"allow_pickle=True for {llm_backbone_id!r}: weights may load from pickle files "
                "(pytorch_model.bin), and unpickling an untrusted file can run arbitrary code. Convert the "
                "checkpoint to safetensors (model.save_pretrained(dir)) and drop allow_pickle.",
                UserWarning,
                stacklevel=2,
            )
        with redacting(hf_token):
            self._build(
                model_path,
                hf_token,
                attn_implementation=attn_implementation,
                use_flash_attention_2=use_flash_attention_2,
                dtype=dtype if dtype is not None else torch.float32,
                trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle,
                strict=strict,
                allow_external_files=allow_external_files,
            )

    def _build(
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
    ) -> None:
        source, local = self._resolve_source(model_path)
        if local:  # before any file is read: each lies inside model_path and can be read
            _loading.check_local_files(Path(source), allow_external=allow_external_files)
        hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if not local and hf_token is not None:
            # Only the hub needs it (a local directory never sees it), as a str whose repr is redacted.
            hub_kwargs["token"] = hf_token.for_hub() if isinstance(hf_token, HubToken) else hf_token
        config = self._load_config(source, local, hub_kwargs)
        expected = self.spec.llm_cls.config_class.model_type
        if config.model_type != expected:
            raise ConfigMismatchError(
                f"{source}/config.json is a {config.model_type!r} model, but backbone "
                f"{self.identifier!r} ({self.spec.family}) needs {expected!r} "
                f"({self.spec.llm_cls.__name__}). Point model_path at a {expected} checkpoint, or use an id "
                "of that checkpoint's family."
            )

        # The weight files, checked (inside model_path, safetensors unless allowed) before anything is loaded.
        files = None if self.inference_mode else self._weight_files(
            source, local, config, hub_kwargs, allow_pickle=allow_pickle, allow_external_files=allow_external_files
        )

        # [Contract] fast tokenizer, right padding (training collates right-padded batches).
        if local:
            _loading.check_tokenizer_files(Path(source))
        self.tokenizer = self._load_tokenizer(source, local, hub_kwargs)
        self._check_bos_contract()
        # A checkpoint saved after this (save_backbone) already has the PAD token: no second one, no resize.
        self._set_pad_token(source)

        attn = select_attn_implementation(attn_implementation, use_flash_attention_2, self.spec.llm_cls, dtype)
        with _BUILD_LOCK:  # transformers swaps process-wide state while it builds a model (see _BUILD_LOCK)
            if self.inference_mode:
                # Size the embeddings the way the trained checkpoint was resized (same rule as below).
                config.vocab_size = self._embedding_rows(config.vocab_size)
                with _parameters_on_meta():
                    self.llm = self.spec.llm_cls._from_config(config, attn_implementation=attn, dtype=dtype)
            else:
                self.llm = self._load_weights(
                    source, local, config, hub_kwargs, attn=attn, dtype=dtype, allow_pickle=allow_pickle,
                    strict=strict, allow_external_files=allow_external_files, files=files,
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
        if not self.inference_mode:
            self.set_training_flags()

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
                "(pass generate(do_sample=True, ...) to sample)", source, settings,
            )
        config.do_sample = False
        for name in self.SAMPLING_SETTINGS:
            setattr(config, name, None)

    def set_training_flags(self) -> None:
        """The seed's training-mode settings (also for a backbone built on the meta device that will be
        trained, e.g. on the ranks that receive their FSDP shards from rank 0)."""
        self.inference_mode = False
        # [Contract] the KV cache only helps generation; in training it costs memory.
        self.llm.config.use_cache = False
        # [Contract] with frozen embeddings, gradient checkpointing needs inputs that require grad.
        self.llm.enable_input_require_grads()

    # === Loading ===
    def _resolve_source(self, model_path: str | Path | None) -> tuple[str, bool]:
        """Where config, tokenizer and weights come from, and whether that is a local directory."""
        if model_path is not None:
            if not isinstance(model_path, (str, os.PathLike)):
                raise ModelPathError(
                    f"model_path must be a str or a path, got {type(model_path).__name__}: {model_path!r:.80}. "
                    "Pass the local directory of an HF-format checkpoint."
                )
            path = Path(model_path).expanduser()
            try:
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
            f"Could not load the {what} of {self.identifier!r} from the hub path {source!r}: {_first_line(exc)} "
            "Pass model_path= a local HF-format directory, or check the network and hf_token (gated "
            "repositories such as meta-llama need an accepted licence and a token)."
        )

    def _load_config(self, source: str, local: bool, hub_kwargs: dict[str, Any]) -> PretrainedConfig:
        raw: dict[str, Any] = {}
        if local:
            config_file = Path(source) / "config.json"
            try:
                raw = json.loads(config_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise ConfigMismatchError(
                    f"{config_file} is not valid JSON ({str(exc)[:160]}): the file is corrupted or truncated. "
                    "Restore it from the original checkpoint (or save the model again with save_pretrained)."
                ) from None
            except PermissionError:
                raise ModelPathError(
                    f"{config_file} cannot be read (permission denied). Give this user read access (chmod u+r) "
                    "or copy the checkpoint somewhere readable."
                ) from None
            except OSError as exc:  # a directory named config.json, ...
                raise ConfigMismatchError(f"{config_file} cannot be read ({exc}). Check the file.") from exc
            if not isinstance(raw, dict):
                raise ConfigMismatchError(
                    f"{config_file} holds a JSON {type(raw).__name__}, not an object of config fields. "
                    "Restore it from the original checkpoint."
                )
            # Before transformers divides by a head count or a model allocates a size.
            _loading.check_config_sizes(raw, str(config_file))
        where = f"{source}/config.json" if local else f"the config of {source!r}"
        try:
            config = AutoConfig.from_pretrained(source, **hub_kwargs)
        except (ZeroDivisionError, TypeError, _StrictDataclassError) as exc:  # a field transformers' config rejects
            raise ConfigMismatchError(
                f"{where} is rejected by transformers ({' '.join(str(exc).split())[:240]}). Fix the field it "
                "names (the base model's config.json has the right value), or point model_path at the "
                "checkpoint's own directory."
            ) from exc
        except ValueError as exc:  # transformers: unknown model_type, custom code refused
            if "auto_map" in raw and not hub_kwargs["trust_remote_code"]:
                raise RemoteCodeError(
                    f"{source}/config.json declares its own code (auto_map: {raw['auto_map']!r:.120}) for "
                    f"model_type {raw.get('model_type')!r}. llm-backbones never runs a checkpoint's code unless "
                    f"asked: read the .py files in {source}, then pass trust_remote_code=True; or use a "
                    "checkpoint of a built-in architecture."
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
            raise self._hub_error(source, "config", exc) from exc
        if not local:  # a hub config, checked as a local one was before transformers read it
            _loading.check_config_sizes(
                {k: v for k, v in config.to_dict().items() if k in _loading.CONFIG_SIZE_BOUNDS}, where
            )
        return config

    def _load_tokenizer(self, source: str, local: bool, hub_kwargs: dict[str, Any]) -> PreTrainedTokenizerBase:
        kwargs = {"model_max_length": self.llm_max_length, "padding_side": "right", **hub_kwargs}
        if self.spec.tokenizer_json_as_written and (not local or (Path(source) / "tokenizer.json").is_file()):
            # [Contract] the pipeline tokenizer.json declares, as transformers 4 loaded it for OpenVLA and
            # Prismatic: transformers 5's LlamaTokenizer class replaces it with a Metaspace pre-tokenizer that
            # tokenizes text after a leading space differently (15 of llama.cpp's 46 LLaMA reference inputs).
            try:
                tokenizer = PreTrainedTokenizerFast.from_pretrained(source, **kwargs)
            except (OSError, ValueError, TypeError) as exc:  # a hub repo without tokenizer.json
                logger.warning("No tokenizer.json in %s (%s): loading its tokenizer class instead", source, _first_line(exc))
            else:
                return as_llama_tokenizer_fast(tokenizer)
        try:
            return AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError, TypeError) as exc:  # transformers raises ValueError for missing files
            if not local:
                raise self._hub_error(source, "tokenizer", exc) from exc
            found = sorted(p.name for p in Path(source).iterdir() if p.name in TOKENIZER_FILES)
            raise ModelPathError(
                f"{source} has no usable tokenizer (tokenizer files found: {found or 'none'}; a fast tokenizer "
                "needs tokenizer.json). Copy the base model's tokenizer into it: "
                f"AutoTokenizer.from_pretrained(<base model>).save_pretrained({source!r})."
            ) from exc

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
        allow_external_files: bool = False,
        files: _loading.WeightFiles | None = None,
    ) -> PreTrainedModel:
        if files is None:
            files = self._weight_files(
                source, local, config, hub_kwargs, allow_pickle=allow_pickle, allow_external_files=allow_external_files
            )
        try:
            llm, info = self.spec.llm_cls.from_pretrained(
                source,
                config=config,
                attn_implementation=attn,
                dtype=dtype,
                # [Contract] safetensors only: unpickling an untrusted file can run arbitrary code.
                use_safetensors=None if allow_pickle else True,
                # [Contract] strict: what is missing, left over or of another shape is reported, and refused below.
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **hub_kwargs,
            )
        except SafetensorError as exc:
            bad = unreadable_safetensors(Path(source)) if local else []
            raise ModelWeightsError(
                f"The weights of {source} cannot be read ({exc}): "
                f"{'; '.join(bad) if bad else 'a safetensors file'} is truncated or corrupted (an interrupted "
                "download, copy or save). Copy or download the checkpoint again."
            ) from exc
        except (pickle.UnpicklingError, EOFError) as exc:  # allow_pickle: torch.load(weights_only=True) refused
            names = ", ".join(str(f) for f in files.files) or f"the pickle weights of {source}"
            raise ModelWeightsError(
                f"{names} cannot be loaded: allow_pickle=True loads pickle weights with "
                f"torch.load(weights_only=True) only (tensors and plain containers), and it refused the file "
                f"({_unpickler_reason(exc)}): the file holds other objects, or is truncated or corrupted. Where "
                "you trust it, convert it once (torch.load(file, weights_only=False), then "
                "model.save_pretrained(dir) writes model.safetensors); else copy the checkpoint again."
            ) from None
        except OSError as exc:
            if not local:
                raise self._hub_error(source, "weights", exc) from exc
            pickles = sorted(p.name for p in Path(source).iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles and not allow_pickle:
                raise ModelPathError(
                    f"{source} holds only pickle weights ({', '.join(pickles)}); llm-backbones loads "
                    "safetensors only, since unpickling an untrusted file can run code. Convert them "
                    "(load once where you trust them, then model.save_pretrained(dir) writes model.safetensors), "
                    "or pass allow_pickle=True if you trust the file."
                ) from exc
            raise ModelPathError(
                f"{source} has no weights that can be loaded ({_first_line(exc)}). Expected "
                "model.safetensors (or model.safetensors.index.json and its shards); to build the "
                "architecture without weights pass inference_mode=True."
            ) from exc
        self._check_loading_info(info, source, files, strict=strict)
        self._check_finite(llm, source, files, strict=strict)
        return llm

    def _weight_files(
        self, source: str, local: bool, config: PretrainedConfig, hub_kwargs: dict[str, Any], *,
        allow_pickle: bool, allow_external_files: bool,
    ) -> _loading.WeightFiles:
        """Every weight file `from_pretrained` will open, checked before it opens any (see `_loading.weight_files`)."""
        if not local:
            return self._hub_weight_files(source, hub_kwargs, allow_pickle=allow_pickle)
        return _loading.weight_files(
            Path(source), getattr(config, "transformers_weights", None),
            allow_pickle=allow_pickle, allow_external=allow_external_files,
        )

    def _hub_weight_files(self, source: str, hub_kwargs: dict[str, Any], *, allow_pickle: bool) -> _loading.WeightFiles:
        """For a hub path without `allow_pickle`: the shard names of its model.safetensors.index.json, refused
        unless they are safetensors files of the repository, before transformers downloads or opens one."""
        if allow_pickle:
            return _loading.WeightFiles()
        try:
            index = cached_file(
                source, _loading.SAFE_INDEX, token=hub_kwargs.get("token"),
                _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
                _raise_exceptions_for_gated_repo=False,
            )
        except Exception:  # noqa: BLE001 - from_pretrained then reports what is wrong with the hub path
            return _loading.WeightFiles()
        if index is None:
            return _loading.WeightFiles()
        index = Path(index)
        weight_map = _loading.read_index(index)
        for name in sorted(set(map(str, weight_map.values()))):
            parts = Path(name).parts
            if not name.endswith(".safetensors") or Path(name).is_absolute() or ".." in parts:
                raise UnsafeFileError(
                    f"The weights index of the hub path {source!r} names {name!r}, which is not a safetensors "
                    "file of the repository; it was not downloaded or opened. llm-backbones loads safetensors "
                    "only (unpickling can run code): use a repository revision with safetensors shards, or pass "
                    "allow_pickle=True to load pickles with torch.load(weights_only=True).",
                    path=name,
                    reason="pickle" if not name.endswith(".safetensors") else "outside",
                )
        return _loading.WeightFiles([], index, {str(k): str(v) for k, v in weight_map.items()})

    def _check_loading_info(
        self, info: Mapping[str, Any], source: str, files: _loading.WeightFiles, *, strict: bool
    ) -> None:
        """Refuse weights of other shapes; refuse (or with `strict=False` log) missing or left-over tensors."""
        mismatched = sorted(info.get("mismatched_keys") or (), key=lambda item: item[0])
        if mismatched:
            shown = "; ".join(
                f"{name} is {list(saved)} in {files.file_of(name)}, the architecture needs {list(built)}"
                for name, saved, built in mismatched[:5]
            )
            raise ModelWeightsError(
                f"The weights of {source} do not fit the architecture its config.json describes "
                f"({len(mismatched)} tensors): {shown}{' ...' if len(mismatched) > 5 else ''}. config.json and the "
                "weights come from different models (or config.json was edited): restore the checkpoint's own "
                "config.json, or point model_path at the checkpoint these weights belong to."
            )
        missing = sorted(info.get("missing_keys") or ())
        unexpected = sorted(info.get("unexpected_keys") or ())
        if not missing and not unexpected:
            return
        where = ", ".join(str(f) for f in files.files[:3]) or source
        message = (
            f"The weights of {where} do not match the {self.spec.llm_cls.__name__} architecture of "
            f"{self.identifier!r}: {len(missing)} missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"{len(unexpected)} unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}. A missing "
            "tensor would be randomly initialised and an unexpected one dropped (a renamed tensor is both)."
        )
        if strict:
            raise StateDictMismatchError(
                message + " Point model_path at the complete checkpoint of this architecture, or pass "
                "strict=False to accept it (e.g. to train a new head).",
                missing,
                unexpected,
            )
        logger.warning("%s Loading anyway (strict=False): the missing tensors are freshly initialised.", message)

    def _check_finite(self, llm: nn.Module, source: str, files: _loading.WeightFiles, *, strict: bool) -> None:
        found = _loading.first_non_finite(llm.named_parameters())
        if found is None:
            return
        name, tensor = found
        file = files.file_of(name) if files.files or files.weight_map else source
        message = (
            f"Weight {name} of {source} holds {_loading.describe_non_finite(tensor)} (read from {file}): the "
            "checkpoint is corrupted or comes from a diverged run."
        )
        if strict:
            raise NonFiniteWeightsError(
                message + " Restore the file from the original checkpoint (or an earlier training checkpoint); "
                "strict=False loads it anyway, with a warning.",
                tensor=name,
                file=file,
            )
        logger.warning("%s Loading anyway (strict=False).", message)

    def _set_pad_token(self, source: str) -> None:
        """Apply the spec's pad policy (see `BackboneSpec`): add `pad_token`, or reuse a reserved one."""
        pad = self.spec.pad_token
        if self.spec.pad_policy == "reuse":
            if pad not in self.tokenizer.get_vocab():
                raise TokenizerContractError(
                    f"Backbone {self.identifier!r} reuses the reserved token {pad!r} as PAD, but the "
                    f"tokenizer of {source} ({len(self.tokenizer)} tokens) has no such token. Point "
                    f"model_path at a {self.spec.family} tokenizer, or register the id with "
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

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As `nn.Module.load_state_dict`; on a meta-built (inference-mode) backbone the tensors are
        assigned, not copied, so weights land without a random init ever happening.

        The backbone keeps its dtypes, as copying would: a bfloat16 state dict loaded into a float32
        backbone gives float32 parameters (each floating tensor is cast to its parameter's dtype before it
        is assigned).
        Pass `assign=True` to take the state dict's tensors as they are (their dtype, no cast).
        """
        if not assign and any(p.device.type == "meta" for p in self.parameters()):
            own = self.state_dict(keep_vars=True)
            state_dict = {
                key: value.to(own[key].dtype)
                if key in own and isinstance(value, torch.Tensor) and value.is_floating_point()
                and own[key].is_floating_point()
                else value
                for key, value in state_dict.items()
            }
            assign = True
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if assign and getattr(self.llm.config, "tie_word_embeddings", False):
            self.llm.tie_weights()
        return result

    # === Interface ===
    def get_fsdp_wrapping_policy(self) -> Callable:
        """FSDP1 auto-wrap policy: one unit per decoder layer (`transformer_layer_cls`)."""
        return partial(transformer_auto_wrap_policy, transformer_layer_cls={self.transformer_layer_cls})

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer's activations in backward (non-reentrant: composes with FSDP and
        frozen parameters). transformers renamed the switch to `activation_checkpointing_enable`."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def embed_input_ids(self, input_ids: torch.LongTensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(input_ids)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast:
        if self.fused_loss and labels is not None and not output_attentions and return_dict is not False:
            return self._forward_fused_loss(
                input_ids, attention_mask, position_ids, inputs_embeds, labels, output_hidden_states
            )
        # Only what the caller set is passed on, so HF's own defaults (and its renamed or deprecated
        # keywords across 5.x releases) apply exactly as when calling the model directly.
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            CACHE_KEYWORD: past_key_values,
            "inputs_embeds": inputs_embeds,
            "labels": labels,
            "use_cache": use_cache,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "return_dict": return_dict,
        }
        return self.llm(**{k: v for k, v in given.items() if v is not None})

    def enable_fast_training(self, *, fused_loss: bool = True, compile_layers: bool | None = None) -> None:
        """Faster forward+backward at equal loss.

        `fused_loss`: with labels, the loss is computed chunk by chunk from the last hidden states and the
        full logits are never materialised (`logits` is then None in the output). `compile_layers`:
        `torch.compile` each decoder layer (fuses RMSNorm, RoPE, SwiGLU); default on where CUDA is
        available, off on CPU where compilation costs more than it saves.
        """
        self.fused_loss = fused_loss
        if compile_layers is None:
            compile_layers = torch.cuda.is_available()
        if compile_layers:
            for layer in self.llm.get_decoder().layers:
                layer.compile()

    def _forward_fused_loss(
        self, input_ids, attention_mask, position_ids, inputs_embeds, labels, output_hidden_states
    ) -> CausalLMOutputWithPast:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "use_cache": False,
            "output_hidden_states": output_hidden_states,
        }
        out = self.llm.get_decoder()(**{k: v for k, v in given.items() if v is not None})
        head = self.llm.get_output_embeddings()
        loss = chunked_causal_lm_loss(
            out.last_hidden_state,
            head.weight,
            labels,
            lm_head_bias=head.bias,
            logit_softcap=getattr(self.llm.config, "final_logit_softcapping", None),
        )
        return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=out.hidden_states)

    # === Generation ===
    def generate(self, **kwargs: Any) -> torch.Tensor:
        """HF `generate` of the wrapped model (sampling, beams, stop strings: everything HF offers)."""
        return self.llm.generate(**kwargs)

    def generate_greedy(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 8,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Fast fixed-length greedy decoding (`llm_backbones.generation.generate_greedy`); new ids only.

        Eager by default; compiled after `prepare_for_generation` (or with `compiled=True`).
        """
        return generate_greedy(
            self.llm,
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            **kwargs,
        )

    def prepare_for_generation(
        self,
        *,
        batch_sizes: int | Sequence[int] = (1,),
        max_prompt_length: int,
        max_new_tokens: int = 8,
        **kwargs: Any,
    ) -> Any:
        """Compile greedy generation ahead of time (`llm_backbones.generation.prepare_for_generation`).

        Prompts are left-padded to a few lengths up to `max_prompt_length`, and the prefill and decode step
        compiled (CUDA graphs on CUDA) for each of `batch_sizes`, so that later `generate_greedy` /
        `generate_actions` calls of a prepared shape never compile (a robot's control loop). Opt-in; returns
        the `PreparedGeneration`.
        """
        from llm_backbones.generation import prepare_for_generation

        return prepare_for_generation(
            self.llm, batch_sizes=batch_sizes, max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
            **kwargs,
        )

    def generate_actions(
        self,
        action_tokenizer: Any,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        action_dim: int = 7,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy-generate exactly `action_dim` tokens per row and decode them: `[B, action_dim]` (float64
        bin centres), as OpenVLA's `predict_action` does before un-normalizing.

        The prompt must end where the actions begin (`vla_prompt`, or `tokenize_prompt(..., reply=...)`:
        on LLaMA-2 with the "▁" the model saw before its actions), so no decode step is spent on a
        separator. A generated token that is not an action token raises `ActionError`.
        """
        new = self.generate_greedy(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=action_dim,
            **kwargs,
        )
        return action_tokenizer.decode(new)

    @property
    def prompt_builder_fn(self) -> type[PromptBuilder]:
        builder = self.spec.prompt_builder
        if builder is None:
            raise PromptFormatError(f"No PromptBuilder defined for LLM Backbone `{self.identifier}`")
        return builder

    @property
    def transformer_layer_cls(self) -> type[nn.Module]:
        return self.spec.layer_cls

    @property
    def half_precision_dtype(self) -> torch.dtype:
        return self.spec.half_precision_dtype

    @property
    def last_layer_finetune_modules(self) -> Sequence[nn.Module]:
        """Input embeddings, the last decoder layer and the LM head, each module and each parameter once.

        With tied embeddings (Llama-3.2, Qwen2.5 0.5B-3B, Gemma-2) the LM head's weight *is* the input
        embedding, so the head is not listed again: `(embed_tokens, layers[-1])`. Its weight trains through
        `embed_tokens`, and an optimizer built from these modules' parameters sees every tensor once.
        """
        from llm_backbones.finetune import last_layer_modules

        return last_layer_modules(self.llm)

    def extra_repr(self) -> str:
        return f"id={self.identifier!r}, family={self.llm_family!r}, inference_mode={self.inference_mode}"
