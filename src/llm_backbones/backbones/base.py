"""The backbone interface (`LLMBackbone`) and its one HF implementation (`HFCausalLLMBackbone`).

`HFCausalLLMBackbone` does everything the original's family subclasses did (PAD token, embedding
resize, prompt builder, layer class, dtype, last-layer modules), driven by the id's registry entry.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_backbones.embedded import embedded_model_dir
from llm_backbones.errors import (
    ConfigMismatchError,
    ModelPathError,
    PromptFormatError,
    TokenizerContractError,
)
from llm_backbones.prompting import PromptBuilder
from llm_backbones.registry import BackboneSpec, get_spec

logger = logging.getLogger(__name__)


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


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every nn.Parameter on the meta device while buffers stay real.

    A model built under it costs neither memory nor random-init time; its non-persistent buffers (RoPE
    frequencies), which no checkpoint holds, are computed for real. `load_state_dict(assign=True)`
    then brings the weights.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
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
        hf_token: hub token (never logged or stored).
        inference_mode: build the architecture on the meta device from the config only (no weights, no
            random init); load trained weights with `load_state_dict`. `use_cache=True`.
        use_flash_attention_2: prefer flash-attention-2 where it can run (see
            `select_attn_implementation`); `attn_implementation=` overrides.
        model_path: a local HF-format directory that replaces the hub path.
        dtype: the dtype of the loaded weights (default float32, as the original).
        trust_remote_code: passed to HF only when the caller sets it.
    """

    def __init__(
        self,
        llm_backbone_id: str,
        llm_family: str | None = None,
        llm_cls: type[PreTrainedModel] | None = None,
        hf_hub_path: str | None = None,
        llm_max_length: int = 2048,
        hf_token: str | None = None,
        inference_mode: bool = False,
        use_flash_attention_2: bool = False,
        *,
        model_path: str | Path | None = None,
        attn_implementation: str | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(llm_backbone_id)
        overrides = {"family": llm_family, "llm_cls": llm_cls, "hf_hub_path": hf_hub_path}
        self.spec: BackboneSpec = replace(
            get_spec(llm_backbone_id), **{k: v for k, v in overrides.items() if v is not None}
        )
        self.llm_family, self.hf_hub_path = self.spec.family, self.spec.hf_hub_path
        self.llm_max_length, self.inference_mode = llm_max_length, inference_mode

        source = self._resolve_source(model_path)
        hub_kwargs: dict[str, Any] = {"token": hf_token, "trust_remote_code": trust_remote_code}
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
        expected = self.spec.llm_cls.config_class.model_type
        if config.model_type != expected:
            raise ConfigMismatchError(
                f"{source}/config.json is a {config.model_type!r} model, but backbone "
                f"{llm_backbone_id!r} ({self.spec.family}) needs {expected!r} "
                f"({self.spec.llm_cls.__name__}). Point model_path at a {expected} checkpoint, or use an id "
                "of that checkpoint's family."
            )

        # [Contract] fast tokenizer, right padding (training collates right-padded batches).
        self.tokenizer = AutoTokenizer.from_pretrained(
            source, model_max_length=llm_max_length, padding_side="right", **hub_kwargs
        )
        self._check_bos_contract()
        self._set_pad_token(source)

        attn = select_attn_implementation(attn_implementation, use_flash_attention_2, self.spec.llm_cls)
        dtype = dtype if dtype is not None else torch.float32
        if inference_mode:
            # Size the embeddings the way the trained checkpoint was resized (same rule as below).
            config.vocab_size = self._embedding_rows(config.vocab_size)
            with _parameters_on_meta():
                self.llm = self.spec.llm_cls._from_config(config, attn_implementation=attn, dtype=dtype)
        else:
            self.llm = self.spec.llm_cls.from_pretrained(
                source, config=config, attn_implementation=attn, dtype=dtype, **hub_kwargs
            )
            rows = self.llm.get_input_embeddings().weight.shape[0]
            if self._embedding_rows(rows) != rows:
                # [Contract] mean-initialised new rows, rows padded to a multiple of 64 (tensor cores). HF
                # re-ties a tied LM head to the resized input embedding.
                self.llm.resize_token_embeddings(
                    len(self.tokenizer), pad_to_multiple_of=self.spec.pad_to_multiple_of
                )
        self.llm.config.pad_token_id = self.tokenizer.pad_token_id
        # [Contract] the KV cache only helps generation; in training it costs memory.
        self.llm.config.use_cache = inference_mode
        if not inference_mode:
            # [Contract] with frozen embeddings, gradient checkpointing needs inputs that require grad.
            self.llm.enable_input_require_grads()

    # === Loading ===
    def _resolve_source(self, model_path: str | Path | None) -> str:
        if model_path is not None:
            path = Path(model_path).expanduser()
            if not path.is_dir():
                raise ModelPathError(
                    f"model_path={str(model_path)!r} is not a directory. Pass the local directory of an "
                    "HF-format checkpoint (config.json, tokenizer files, *.safetensors)."
                )
            if not (path / "config.json").is_file():
                raise ModelPathError(
                    f"model_path={str(path)!r} has no config.json, so it is not an HF-format checkpoint. "
                    "Point it at the directory that holds config.json (e.g. the output of save_pretrained)."
                )
            return str(path)
        if self.spec.embedded is not None:
            return str(embedded_model_dir(self.spec.embedded))
        return self.spec.hf_hub_path

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
        """The embedding rows this backbone needs, given a checkpoint's `rows`: unchanged while every
        token has a row (spare rows are kept, never cut), else `len(tokenizer)` rounded up to
        `pad_to_multiple_of` (LLaMA-2: 32001 tokens -> 32064)."""
        n, k = len(self.tokenizer), self.spec.pad_to_multiple_of
        return rows if n <= rows else (n + k - 1) // k * k

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
        assigned, not copied, so weights land without a random init ever happening."""
        if any(p.device.type == "meta" for p in self.parameters()):
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
        # Only what the caller set is passed on, so HF's own defaults (and its renamed or deprecated
        # keywords across 5.x releases) apply exactly as when calling the model directly.
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "past_key_values": past_key_values,
            "inputs_embeds": inputs_embeds,
            "labels": labels,
            "use_cache": use_cache,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "return_dict": return_dict,
        }
        return self.llm(**{k: v for k, v in given.items() if v is not None})

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
        candidates = (
            self.llm.get_input_embeddings(),
            self.llm.get_decoder().layers[-1],
            self.llm.get_output_embeddings(),
        )
        unique: list[nn.Module] = []
        seen: set[int] = set()
        for module in candidates:
            if module is None or any(module is m for m in unique):
                continue
            params = {id(p) for p in module.parameters()}
            if unique and params and params <= seen:  # tied head: nothing of its own to add
                continue
            unique.append(module)
            seen |= params
        return tuple(unique)

    def extra_repr(self) -> str:
        return f"id={self.identifier!r}, family={self.llm_family!r}, inference_mode={self.inference_mode}"
