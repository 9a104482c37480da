"""The backbone interface (`LLMBackbone`) and its one HF implementation (`HFCausalLLMBackbone`).

`HFCausalLLMBackbone` does everything the original's family subclasses did (PAD token, embedding
resize, prompt builder, layer class, dtype, last-layer modules), driven by the id's registry entry;
`loading.HFLoader` builds its model and tokenizer.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_backbones import _args
from llm_backbones._redact import HubToken, redacting
from llm_backbones.core.backbones import files as _files
from llm_backbones.core.backbones.loading import HFLoader, check_attn_implementation
from llm_backbones.core.prompting.builder import PromptBuilder
from llm_backbones.core.prompting.formats import PROMPT_FORMATS, get_prompt_format
from llm_backbones.core.registry import BackboneSpec, get_spec
from llm_backbones.errors import PromptFormatError
from llm_backbones.runtime.fused_loss import chunked_causal_lm_loss
from llm_backbones.runtime.generation import (
    CACHE_KEYWORD,
    check_weights_loaded,
    generate_actions,
    generate_greedy,
    prepare_for_generation,
)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: dict[int, nn.Parameter] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def last_layer_modules(llm: nn.Module) -> tuple[nn.Module, ...]:
    """Input embeddings, the last decoder layer and the LM head of an HF causal LM, each module and each
    parameter once (a tied LM head, whose weight *is* the input embedding, is not listed again)."""
    candidates = (llm.get_input_embeddings(), llm.get_decoder().layers[-1], llm.get_output_embeddings())
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


def check_format_fits_tokenizer(
    spec: BackboneSpec, tokenizer: PreTrainedTokenizerBase, backbone_id: str
) -> None:
    """`PromptFormatError` when the control markers of `spec`'s prompt format (`<|im_start|>`, `</s>`, ...)
    are not single tokens of `tokenizer`: its prompts would hold them as plain text the model never saw as
    markers. Names the format, the markers and the formats of the backbone's own family."""
    markers = get_prompt_format(spec.prompt_format).control_markers
    split = {m: ids for m in markers if len(ids := tokenizer.encode(m, add_special_tokens=False)) != 1}
    if not split:
        return
    own = get_spec(backbone_id).prompt_format
    family = sorted(
        name for name, fmt in PROMPT_FORMATS.items() if fmt.official_name == PROMPT_FORMATS[own].official_name
    )
    shown = ", ".join(f"{m!r} -> {len(ids)} tokens" for m, ids in list(split.items())[:4])
    raise PromptFormatError(
        f"prompt_format={spec.prompt_format!r} does not fit backbone {backbone_id!r}: its control markers "
        "are "
        f"not tokens of this tokenizer ({len(tokenizer)} pieces): {shown}. Its prompts would carry them as "
        "plain text the model never saw as markers. Accepted: a format whose markers the tokenizer has, "
        "such "
        f"as the backbone's own {', '.join(repr(f) for f in family)}; pass one of those (or omit "
        "prompt_format), or use a backbone id of that format's family."
    )


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
    def prompt_builder_fn(self) -> Callable[..., PromptBuilder]: ...

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


class HFCausalLLMBackbone(LLMBackbone):
    """A backbone over any HF causal LM, configured by its registry entry.

    Args:
        llm_backbone_id: a registered id (see `llm_backbones.core.registry`).
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
        prompt_format: the name of the prompt format this backbone is used with, when it is not the id's
            (e.g. "llama2-chat-prismatic": the original's strings); `prompt_builder_fn` follows it and
            `save_backbone` records it.
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
        prompt_format: str | None = None,
    ) -> None:
        hf_token = HubToken.wrap(hf_token)  # first: from here on no frame of the load holds the plain token
        # Every argument checked here, before anything is read (never passed on to transformers to fail).
        llm_max_length = _files.check_llm_max_length(llm_max_length, "llm_max_length= (the argument)")
        for name, flag in (
            ("inference_mode", inference_mode),
            ("use_flash_attention_2", use_flash_attention_2),
            ("trust_remote_code", trust_remote_code),
            ("allow_pickle", allow_pickle),
            ("strict", strict),
            ("allow_external_files", allow_external_files),
        ):
            _args.check_bool(flag, name)
        dtype = _args.check_dtype(dtype) if dtype is not None else torch.float32
        attn_implementation = check_attn_implementation(attn_implementation)
        super().__init__(llm_backbone_id)
        self.fused_loss = False
        overrides = {"llm_family": llm_family, "llm_cls": llm_cls, "hf_hub_path": hf_hub_path}
        spec = get_spec(llm_backbone_id)
        if prompt_format is not None:  # another format than the id's: its builder follows from it
            spec = spec.with_prompt_format(prompt_format)
        self.spec: BackboneSpec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
        self.llm_family, self.hf_hub_path = self.spec.llm_family, self.spec.hf_hub_path
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
            loader = HFLoader(
                self.spec, llm_backbone_id, llm_max_length=llm_max_length, inference_mode=inference_mode
            )
            self.llm, self.tokenizer = loader.load(
                model_path,
                hf_token,
                attn_implementation=attn_implementation,
                use_flash_attention_2=use_flash_attention_2,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle,
                strict=strict,
                allow_external_files=allow_external_files,
            )
        if prompt_format is not None:
            check_format_fits_tokenizer(self.spec, self.tokenizer, llm_backbone_id)
        if not inference_mode:
            self.set_training_flags()

    def set_training_flags(self) -> None:
        """The seed's training-mode settings (also for a backbone built on the meta device that will be
        trained, e.g. on the ranks that receive their FSDP shards from rank 0)."""
        self.inference_mode = False
        # [Contract] the KV cache only helps generation; in training it costs memory.
        self.llm.config.use_cache = False
        # [Contract] with frozen embeddings, gradient checkpointing needs inputs that require grad.
        self.llm.enable_input_require_grads()

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
                if key in own
                and isinstance(value, torch.Tensor)
                and value.is_floating_point()
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
        """HF `generate` of the wrapped model (sampling, beams, stop strings: everything HF offers); refused
        (`ModelWeightsError`) while the weights of an `inference_mode=True` backbone are not loaded."""
        check_weights_loaded(self.llm, "generate()")
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
        """Fast fixed-length greedy decoding (`llm_backbones.runtime.generation.generate_greedy`); new ids
        only.

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
        """Compile greedy generation ahead of time
        (`llm_backbones.runtime.generation.prepare_for_generation`).

        Prompts are left-padded to a few lengths up to `max_prompt_length`, and the prefill and decode step
        compiled (CUDA graphs on CUDA) for each of `batch_sizes`, so that later `generate_greedy` /
        `generate_actions` calls of a prepared shape never compile (a robot's control loop). Opt-in; returns
        the `PreparedGeneration`.
        """
        return prepare_for_generation(
            self.llm,
            batch_sizes=batch_sizes,
            max_prompt_length=max_prompt_length,
            max_new_tokens=max_new_tokens,
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
        """Greedy-generate `action_dim` action tokens per row and decode them
        (`llm_backbones.runtime.generation.generate_actions`): `[B, action_dim]` bin centres."""
        return generate_actions(
            self.llm,
            action_tokenizer,
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            action_dim=action_dim,
            **kwargs,
        )

    @property
    def prompt_builder_fn(self) -> Callable[..., PromptBuilder]:
        """What makes this backbone's prompt builders: the format's named class (`PurePromptBuilder`), or
        `builder_for(prompt_format)` for a format without one (a Prismatic twin, a registered format)."""
        return self.spec.prompt_builder_fn

    @property
    def prompt_format(self) -> str:
        """The name of this backbone's prompt format (see `PROMPT_FORMATS`)."""
        return self.spec.prompt_format

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
        return last_layer_modules(self.llm)

    def extra_repr(self) -> str:
        return f"id={self.identifier!r}, family={self.llm_family!r}, inference_mode={self.inference_mode}"
