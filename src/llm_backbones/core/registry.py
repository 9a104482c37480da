"""The one table of backbone ids.

An id is declared once, as a `BackboneSpec`: family, model class, hub path, prompt format, BOS and pad
policy, half-precision dtype and decoder-layer class. Everything else (`LLAMA2_MODELS`, `LLM_BACKBONES`,
`prompt_builder_for`, the backbone's properties) is derived from it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from llm_backbones.core.prompting.builder import (
    _BUILDER_CLASSES,
    PromptBuilder,
    PromptBuilderFactory,
    builder_for,
)
from llm_backbones.core.prompting.formats import PromptFormat, get_prompt_format
from llm_backbones.errors import InvalidSpecError, PromptFormatError, RegistryError, UnknownBackboneError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel


_REQUIRED = object()


class LazyImport:
    """A `BackboneSpec` field that holds a value or its dotted name, imported on first read: a class
    ("transformers.LlamaForCausalLM"), a dtype ("torch.bfloat16"). Listing the registry imports neither torch
    nor any model code. `BackboneSpec.class_name(field)` gives a class's name without importing it."""

    def __init__(self, what: str, example: str, accepts: Any, default: Any = _REQUIRED) -> None:
        self.what, self.example, self.accepts, self.default = what, example, accepts, default

    def __set_name__(self, owner: type, name: str) -> None:
        self.field, self.slot = name, f"_{name}"

    def __get__(self, spec: Any, owner: type | None = None) -> Any:
        if spec is None:  # the dataclass asks for the default
            if self.default is _REQUIRED:
                raise AttributeError(self.field)
            return self.default
        value = spec.__dict__[self.slot]
        if isinstance(value, str):
            module, _, name = value.rpartition(".")
            try:
                value = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise InvalidSpecError(
                    f"Backbone {spec.backbone_id!r}: {self.field}={spec.__dict__[self.slot]!r} cannot be "
                    f"imported ({exc}). Give the {self.what} itself, or its full dotted name (e.g. "
                    f"{self.example!r})."
                ) from None
            if not self.accepts(value):
                raise InvalidSpecError(
                    f"Backbone {spec.backbone_id!r}: {self.field}={spec.__dict__[self.slot]!r} is a "
                    f"{type(value).__name__}, not a {self.what} (e.g. {self.example!r})."
                )
            spec.__dict__[self.slot] = value
        return value

    def __set__(self, spec: Any, value: Any) -> None:
        if not (self.accepts(value) or (isinstance(value, str) and "." in value)):
            raise InvalidSpecError(
                f"{self.field} must be a {self.what} or its dotted name such as {self.example!r}, got "
                f"{type(value).__name__}: {value!r:.80}."
            )
        spec.__dict__[self.slot] = value

    @staticmethod
    def raw(spec: Any, field: str) -> Any:
        """The field as given (a dotted name stays a name)."""
        return spec.__dict__[f"_{field}"]

    @staticmethod
    def dotted(spec: Any, field: str) -> str:
        """The field's dotted name, whether it was given as one or has been imported since."""
        value = spec.__dict__[f"_{field}"]
        return (
            value if isinstance(value, str) else f"{value.__module__}.{getattr(value, '__qualname__', value)}"
        )


def _is_class(value: Any) -> bool:
    return isinstance(value, type)


def _is_dtype(value: Any) -> bool:
    return type(value).__module__ == "torch" and type(value).__name__ == "dtype"


def _builder_serving(fmt: PromptFormat, builder: Any) -> Any:
    """What makes builders of `fmt`: `builder` if it renders `fmt` (a class naming it, or naming the format
    whose Prismatic twin `fmt` is, then bound to the twin; a `builder_for` factory of `fmt`; a callable of the
    caller's), else a mismatch error; with no builder, the format's named class or `builder_for(fmt.name)`."""
    if builder is None:
        cls = _BUILDER_CLASSES.get(fmt.name)
        return cls if cls is not None else builder_for(fmt.name)
    if isinstance(builder, PromptBuilderFactory):
        if builder.format.name != fmt.name:
            raise PromptFormatError(
                f"prompt_builder_fn={builder!r} renders {builder.format.name!r}, not "
                f"prompt_format={fmt.name!r}. Give one of the two."
            )
        return builder
    key = getattr(builder, "format_key", None)
    if key is None or key == fmt.name:  # the caller's callable, or a class of this very format
        return builder
    if key == fmt.official_name and isinstance(builder, type):  # the twin, rendered by the official's class
        return PromptBuilderFactory(fmt, builder, {})
    raise PromptFormatError(
        f"prompt_builder_fn={getattr(builder, '__name__', builder)} renders {key!r}, not "
        f"prompt_format={fmt.name!r}. Give one of the two."
    )


_LAZY_FIELDS = ("llm_cls", "layer_cls", "half_precision_dtype")


PadPolicy = Literal["add", "reuse"]
PAD_POLICIES: tuple[str, ...] = ("add", "reuse")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the library needs to know about one backbone id.

    Attributes:
        backbone_id: the id users pass, `<family>-<version>-<size>-<variant>` (e.g. "llama2-7b-pure").
        llm_family: the family name ("llama2"), the original's `llm_family`; selects the backbone class.
            (Not `model_family`, the builders' "openvla"/"prismatic" choice of default system prompt.)
        hf_hub_path: where the weights live on the HF hub (a `model_path=` overrides it).
        llm_cls: the HF causal-LM class; `layer_cls`: its decoder layer (the FSDP wrapping unit). Each may be
            given as its dotted name ("transformers.LlamaForCausalLM"), imported on first use.
        prompt_format: the name of the id's prompt format (a key of `PROMPT_FORMATS`, e.g. "llama2-chat" or
            its Prismatic twin "llama2-chat-prismatic").
        prompt_builder_fn: what makes its builders (Prismatic's name, as on the backbone), called as
            `prompt_builder_fn(model_family, system_prompt)`: the named builder class of the format
            (`LLaMa2ChatPromptBuilder`), else `builder_for(prompt_format)`. Give either field; the other is
            derived.
        adds_bos: whether the tokenizer inserts BOS itself (checked at load time).
        pad_token, pad_policy: the PAD token and how it is obtained.
            "add" (the seed's): `pad_token` is added as a special token (unless the tokenizer has it);
            when the tokenizer then outgrows the embedding, the rows are resized to
            `len(tokenizer)` rounded up to `pad_to_multiple_of` (new rows mean-initialised, tied embeddings
            stay tied); a checkpoint with spare rows is not resized and never shrunk.
            "reuse": `pad_token` is a token the vocabulary already reserves; it must exist (checked at
            load time); nothing is added or resized.
            Either way the PAD token is one no rendered prompt contains (never the token that ends a reply
            in the family's formats), so masks derived from `input_ids != pad_token_id` stay right.
        half_precision_dtype: the dtype for mixed-precision training and inference.
        parameters: the model's size as its model card states it (e.g. "7.24B"); for listings only.
        arch: the checkpoint's architecture facts, as its config.json has them (vocab/embedding rows, hidden
            size, layers, heads, tied embeddings, BOS/EOS ids), so `llm-backbones info` answers offline.
        tokenizer_size: `len(tokenizer)` of the published tokenizer, before any PAD is added.
        tokenizer_json_as_written: load `tokenizer.json` exactly as it is (the LLaMA-2 and Mistral v0.1
            SentencePiece pipelines OpenVLA/Prismatic trained with) instead of through the class its
            tokenizer_config names (transformers 5's LlamaTokenizer rebuilds a different pipeline).
        embedded: name of a packaged asset directory that replaces the hub (the tiny default).
        source: where the facts of this entry come from.
    """

    backbone_id: str
    llm_family: str
    hf_hub_path: str
    llm_cls: type[PreTrainedModel] = LazyImport("class", "transformers.LlamaForCausalLM", _is_class)  # type: ignore[assignment]
    layer_cls: type[nn.Module] = LazyImport(  # type: ignore[assignment]
        "class", "transformers.models.llama.modeling_llama.LlamaDecoderLayer", _is_class
    )
    prompt_format: str | None = None
    prompt_builder_fn: Callable[..., PromptBuilder] | None = None
    adds_bos: bool = True
    pad_token: str = "<PAD>"
    pad_to_multiple_of: int = 64
    half_precision_dtype: torch.dtype = LazyImport(  # type: ignore[assignment]
        "torch dtype", "torch.bfloat16", _is_dtype, default="torch.bfloat16"
    )
    pad_policy: PadPolicy = "add"
    parameters: str = ""
    arch: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_size: int | None = None
    tokenizer_json_as_written: bool = False
    embedded: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self._settle_prompt_format()
        if self.pad_policy not in PAD_POLICIES:
            raise InvalidSpecError(
                f"Backbone {self.backbone_id!r}: pad_policy={self.pad_policy!r} is not one of "
                f"{PAD_POLICIES}. Use 'add' to add pad_token (resizing the embedding if needed) or "
                "'reuse' for a token the vocabulary already reserves."
            )
        if not isinstance(self.pad_token, str) or not self.pad_token:
            raise InvalidSpecError(
                f"Backbone {self.backbone_id!r}: pad_token must be a non-empty string, got "
                f"{self.pad_token!r}."
            )
        if not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1:
            raise InvalidSpecError(
                f"Backbone {self.backbone_id!r}: pad_to_multiple_of must be a positive int, got "
                f"{self.pad_to_multiple_of!r} (64 suits tensor cores; 1 turns rounding off)."
            )

    def _settle_prompt_format(self) -> None:
        """Derive `prompt_format` from `prompt_builder_fn` or the reverse; both given must agree. A builder
        given is kept (a `builder_for` factory keeps its options); only a missing one is derived."""
        builder, name = self.prompt_builder_fn, self.prompt_format
        if name is None:
            name = getattr(builder, "format_key", None)
            if name is None:
                raise InvalidSpecError(
                    f"Backbone {self.backbone_id!r}: give prompt_format= a format name (e.g. 'pure', "
                    "'llama2-chat'), or prompt_builder_fn= a named PromptBuilder class; got "
                    f"prompt_builder_fn={builder!r}."
                )
        try:
            fmt = get_prompt_format(name)
            builder = _builder_serving(fmt, builder)
        except PromptFormatError as exc:
            raise InvalidSpecError(f"Backbone {self.backbone_id!r}: {exc}") from None
        object.__setattr__(self, "prompt_format", name)
        object.__setattr__(self, "prompt_builder_fn", builder)

    def with_prompt_format(self, name: str) -> BackboneSpec:
        """This spec with another prompt format: its builder class stays where it renders that format (its
        own, or that format's Prismatic twin), else the format's own builder is derived."""
        if name == self.prompt_format:
            return self
        cls = getattr(self.prompt_builder_fn, "builder_cls", self.prompt_builder_fn)
        try:
            official = get_prompt_format(name).official_name
        except PromptFormatError as exc:
            raise InvalidSpecError(f"Backbone {self.backbone_id!r}: {exc}") from None
        keep = isinstance(cls, type) and getattr(cls, "format_key", None) == official
        return dataclasses.replace(self, prompt_format=name, prompt_builder_fn=cls if keep else None)

    @staticmethod
    def class_name(value: type | str) -> str:
        """A class's name, from the class or its dotted name, without importing it."""
        return value.rpartition(".")[2] if isinstance(value, str) else value.__name__

    @property
    def llm_cls_name(self) -> str:
        return self.class_name(LazyImport.raw(self, "llm_cls"))

    @property
    def layer_cls_name(self) -> str:
        return self.class_name(LazyImport.raw(self, "layer_cls"))

    def embedding_rows(self, rows: int, n_tokens: int) -> int:
        """The embedding rows needed for `n_tokens` tokens, given a checkpoint's `rows`: unchanged while
        every token has a row (spare rows are kept, never cut), else `n_tokens` rounded up to
        `pad_to_multiple_of` (LLaMA-2: 32001 tokens -> 32064)."""
        k = self.pad_to_multiple_of
        return rows if n_tokens <= rows else (n_tokens + k - 1) // k * k

    def __deepcopy__(self, memo: dict[int, Any]) -> BackboneSpec:
        # A spec is an immutable value (frozen, `arch` a read-only mapping): copies share it. Without this,
        # `copy.deepcopy(backbone)` fails on the mappingproxy in `arch`.
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle `arch` as a plain dict (a mappingproxy cannot be pickled); `_spec_from_fields` restores it.
        fields = {  # the lazy fields as given: pickling imports nothing
            f.name: LazyImport.raw(self, f.name) if f.name in _LAZY_FIELDS else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }
        fields["arch"] = dict(self.arch)
        return (_spec_from_fields, (fields,))

    @property
    def pad_policy_text(self) -> str:
        """One line for listings: "+<PAD>, rows x64" (added) or "=<|finetune_right_pad_id|> (reserved)"."""
        if self.pad_policy == "reuse":
            return f"={self.pad_token} (reserved)"
        return f"+{self.pad_token}, rows x{self.pad_to_multiple_of}"


def _spec_from_fields(fields: dict[str, Any]) -> BackboneSpec:
    """Rebuild a pickled `BackboneSpec` (its `arch` read-only again)."""
    return BackboneSpec(**{**fields, "arch": MappingProxyType(dict(fields["arch"]))})


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add `spec` to the registry (the one place an id is declared); returns it."""
    if not isinstance(spec, BackboneSpec):
        raise RegistryError(
            f"register_backbone expects a BackboneSpec, got {type(spec).__name__}. Build one with "
            "llm_backbones.BackboneSpec(backbone_id=..., llm_family=..., ...)."
        )
    if not isinstance(spec.backbone_id, str) or not spec.backbone_id.strip():
        raise RegistryError(f"A backbone id must be a non-empty string, got {spec.backbone_id!r}.")
    if spec.backbone_id in _REGISTRY and not overwrite:
        raise RegistryError(
            f"Backbone id {spec.backbone_id!r} is already registered; pass overwrite=True to replace it, or "
            "choose another id."
        )
    _REGISTRY[spec.backbone_id] = spec
    return spec


def get_spec(backbone_id: str) -> BackboneSpec:
    """The registry entry of `backbone_id`; `UnknownBackboneError` (a ValueError) names close ids."""
    try:
        return _REGISTRY[backbone_id]
    except (KeyError, TypeError):
        raise UnknownBackboneError(backbone_id, _REGISTRY) from None


def registered_ids(llm_family: str | None = None) -> list[str]:
    """Every registered id (of one family if given), in registration order."""
    return [i for i, s in _REGISTRY.items() if llm_family is None or s.llm_family == llm_family]


def prompt_builder_for(backbone_id: str) -> Callable[..., PromptBuilder]:
    """The `prompt_builder_fn` of an id, without loading any model (datasets need it)."""
    return get_spec(backbone_id).prompt_builder_fn


class _FamilyView(Mapping[str, dict[str, Any]]):
    """A live, read-only view of one family's ids in the original's shape:
    `{id: {"llm_family", "llm_cls", "hf_hub_path"}}`."""

    def __init__(self, family: str) -> None:
        self._family = family

    def __getitem__(self, backbone_id: str) -> dict[str, Any]:
        spec = _REGISTRY.get(backbone_id)
        if spec is None or spec.llm_family != self._family:
            raise UnknownBackboneError(backbone_id, self, scope=f"{self._family} family")
        return {"llm_family": spec.llm_family, "llm_cls": spec.llm_cls, "hf_hub_path": spec.hf_hub_path}

    def __iter__(self) -> Iterator[str]:
        return iter(registered_ids(self._family))

    def __len__(self) -> int:
        return len(registered_ids(self._family))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._family!r}: {list(self)})"

    def __setitem__(self, backbone_id: str, value: Any) -> None:
        view = _VIEW_NAMES.get(self._family, f"{self._family} view")
        raise registry_write_error(view, backbone_id, value, family=self._family)

    def __delitem__(self, backbone_id: str) -> None:
        view = _VIEW_NAMES.get(self._family, f"{self._family} view")
        raise registry_write_error(view, backbone_id, family=self._family, deleting=True)


def registry_write_error(
    view: str, backbone_id: object, value: Any = None, *, family: str | None = None, deleting: bool = False
) -> RegistryError:
    """The error for `VIEW[id] = value` (how Prismatic code added ids) or `del VIEW[id]` (`deleting=True`) on
    a read-only registry view named `view`.

    The views are read-only because an id is declared once, with everything the library needs (prompt format,
    pad and BOS policy, decoder layer), which the original's three-field dicts do not say. The message shows
    the `register_backbone` call to write instead, filled in from `value` where it can be.
    """
    if deleting:
        return RegistryError(
            f"{view} is a read-only view of the backbone registry; `del {view}[{backbone_id!r}]` cannot "
            "remove an id. Build the backbone of another id instead, or register a replacement with "
            "llm_backbones.register_backbone(spec, overwrite=True)."
        )
    entry = value if isinstance(value, Mapping) else {}
    family = entry.get("llm_family", family)
    example = next((s for s in _REGISTRY.values() if s.llm_family == family), None)
    llm_cls = getattr(entry.get("llm_cls"), "__name__", None)
    llm_cls = llm_cls or (repr(LazyImport.dotted(example, "llm_cls")) if example else "<HF class>")
    fields = [
        f"backbone_id={backbone_id!r}",
        f"llm_family={family!r}" if family else "llm_family=<family name, e.g. 'llama2'>",
        f"hf_hub_path={entry['hf_hub_path']!r}" if "hf_hub_path" in entry else "hf_hub_path=<hub id>",
        f"llm_cls={llm_cls}",
        f"layer_cls={LazyImport.dotted(example, 'layer_cls')!r}"
        if example
        else "layer_cls=<decoder layer class>",
        "prompt_format=<its format name, e.g. 'pure'>",
    ]
    return RegistryError(
        f"{view} is a read-only view of the backbone registry: `{view}[{backbone_id!r}] = ...` does not "
        f"register {backbone_id!r} (got a {type(value).__name__}). Declare the id once with "
        f"llm_backbones.register_backbone(llm_backbones.BackboneSpec({', '.join(fields)})); it then appears "
        f"in {view}, LLM_BACKBONES and get_llm_backbone_and_tokenizer."
    )


# The original's per-family dicts, and one per newer family: live views of the registry.
_VIEW_NAMES = {
    "llama2": "LLAMA2_MODELS",
    "mistral": "MISTRAL_MODELS",
    "phi": "PHI_MODELS",
    "llama3": "LLAMA3_MODELS",
    "qwen2.5": "QWEN25_MODELS",
    "gemma2": "GEMMA2_MODELS",
    "phi3": "PHI3_MODELS",
}
LLAMA2_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("llama2")
MISTRAL_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("mistral")
PHI_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("phi")
LLAMA3_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("llama3")
QWEN25_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("qwen2.5")
GEMMA2_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("gemma2")
PHI3_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("phi3")


def _family(family: str, llm_cls: str, layer_cls: str, **family_kw: Any) -> Any:
    """A registration function for one family: `add(id, hub, prompt_format, parameters, **overrides)`.
    Classes are given by name (`transformers.<llm_cls>`, the decoder layer's module path) and imported on
    first use."""

    def add(backbone_id: str, hub: str, prompt_format: str, parameters: str, **kw: Any) -> None:
        register_backbone(
            BackboneSpec(
                backbone_id=backbone_id,
                llm_family=family,
                hf_hub_path=hub,
                llm_cls=f"transformers.{llm_cls}",
                layer_cls=f"transformers.models.{layer_cls}",
                prompt_format=prompt_format,
                parameters=parameters,
                source=kw.pop("source", f"https://huggingface.co/{hub}/blob/main/config.json"),
                **{**family_kw, **kw},
            )
        )

    return add


def _arch(
    vocab: int,
    hidden: int,
    mlp: int,
    layers: int,
    heads: int,
    kv: int,
    *,
    tied: bool,
    bos: int | None,
    eos: int,
    **extra: Any,
) -> Mapping[str, Any]:
    """Architecture facts in config.json's field names (the source: each entry's hub config.json)."""
    return MappingProxyType(
        {
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": mlp,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "tie_word_embeddings": tied,
            "bos_token_id": bos,
            "eos_token_id": eos,
            **extra,
        }
    )


_LLAMA2_7B = _arch(32000, 4096, 11008, 32, 32, 32, tied=False, bos=1, eos=2)
_LLAMA2_13B = _arch(32000, 5120, 13824, 40, 40, 40, tied=False, bos=1, eos=2)
_LLAMA2 = {"tokenizer_size": 32000}

# === LLaMA-2 family (Prismatic's LLAMA2_MODELS) ===
# No PAD in the SentencePiece vocabulary (32000): add <PAD> (32000), rows 32000 -> 32064 (the seed's).
_llama2 = _family(
    "llama2", "LlamaForCausalLM", "llama.modeling_llama.LlamaDecoderLayer", tokenizer_json_as_written=True
)
_llama2("llama2-7b-pure", "meta-llama/Llama-2-7b-hf", "pure", "6.74B", arch=_LLAMA2_7B, **_LLAMA2)
_llama2("llama2-13b-pure", "meta-llama/Llama-2-13b-hf", "pure", "13.0B", arch=_LLAMA2_13B, **_LLAMA2)
_llama2("llama2-7b-chat", "meta-llama/Llama-2-7b-chat-hf", "llama2-chat", "6.74B", arch=_LLAMA2_7B, **_LLAMA2)
_llama2(
    "llama2-13b-chat", "meta-llama/Llama-2-13b-chat-hf", "llama2-chat", "13.0B", arch=_LLAMA2_13B, **_LLAMA2
)
_llama2("vicuna-v15-7b", "lmsys/vicuna-7b-v1.5", "vicuna-v15", "6.74B", arch=_LLAMA2_7B, **_LLAMA2)
_llama2("vicuna-v15-13b", "lmsys/vicuna-13b-v1.5", "vicuna-v15", "13.0B", arch=_LLAMA2_13B, **_LLAMA2)
# The embedded default: LLaMA-2 architecture at a few million parameters with the real LLaMA-2
# tokenizer, packaged in llm_backbones/assets/llama2-tiny (weights made from a fixed seed on first use).
_llama2(
    "llama2-tiny-pure",
    "llm-backbones/llama2-tiny (embedded)",
    "pure",
    "8.6M",
    arch=_arch(32000, 128, 344, 2, 4, 4, tied=False, bos=1, eos=2),
    tokenizer_size=32000,
    embedded="llama2-tiny",
    source="llm_backbones/assets/llama2-tiny/PROVENANCE.md",
)

# === Mistral v0.1 (Prismatic's MISTRAL_MODELS) ===
# Same SentencePiece layout as LLaMA-2 (32000 pieces, <s>=1 added as BOS, no PAD, no reserved token):
# add <PAD> (32000) and resize 32000 -> 32064, as Prismatic's Mistral backbone did.
_mistral = _family(
    "mistral",
    "MistralForCausalLM",
    "mistral.modeling_mistral.MistralDecoderLayer",
    tokenizer_json_as_written=True,
)
_MISTRAL_7B = {
    "arch": _arch(32000, 4096, 14336, 32, 32, 8, tied=False, bos=1, eos=2, sliding_window=4096),
    "tokenizer_size": 32000,
}
_mistral("mistral-v0.1-7b-pure", "mistralai/Mistral-7B-v0.1", "pure", "7.24B", **_MISTRAL_7B)
_mistral(
    "mistral-v0.1-7b-instruct",
    "mistralai/Mistral-7B-Instruct-v0.1",
    "mistral-instruct",
    "7.24B",
    **_MISTRAL_7B,
)

# === Phi-2 (Prismatic's PHI_MODELS) ===
# CodeGen BPE (50295 tokens), no BOS added (the Phi format writes <|endoftext|> itself), no PAD; the
# embedding already has 51200 rows. Add <|pad|> (Prismatic's choice, id 50295) into a spare row: no resize
# (the seed's resize to len(tokenizer) rounded to 64 would shrink 51200 -> 50304). Not <|endoftext|>:
# that is Phi-2's BOS/EOS, present in every prompt.
_phi = _family(
    "phi", "PhiForCausalLM", "phi.modeling_phi.PhiDecoderLayer", adds_bos=False, pad_token="<|pad|>"
)
_phi(
    "phi-2-3b",
    "microsoft/phi-2",
    "phi-2",
    "2.78B",
    tokenizer_size=50295,
    arch=_arch(51200, 2560, 10240, 32, 32, 32, tied=False, bos=50256, eos=50256, partial_rotary_factor=0.4),
)

# === Llama 3.1 / 3.2 ===
# Tiktoken-style BPE, 128000 tokens + 256 reserved specials = 128256 rows (a multiple of 64), BOS
# <|begin_of_text|> added by the tokenizer. Meta reserves <|finetune_right_pad_id|> (128004) for padding
# from Llama 3.1 on; reuse it (the tokenizer config declares no pad): no new row, so the 1B/3B models'
# tied embeddings are untouched. Not <|end_of_text|>/<|eot_id|>: those end replies.
_llama3 = _family(
    "llama3",
    "LlamaForCausalLM",
    "llama.modeling_llama.LlamaDecoderLayer",
    pad_token="<|finetune_right_pad_id|>",
    pad_policy="reuse",
)
_L3 = {"rope_theta": 500000.0, "max_position_embeddings": 131072, "pad_token_id": 128004}  # the reserved PAD
_LLAMA31_8B = {
    "tokenizer_size": 128256,
    "arch": _arch(128256, 4096, 14336, 32, 32, 8, tied=False, bos=128000, eos=128001, **_L3),
}
_LLAMA32_1B = {
    "tokenizer_size": 128256,
    "arch": _arch(128256, 2048, 8192, 16, 32, 8, tied=True, bos=128000, eos=128001, head_dim=64, **_L3),
}
_LLAMA32_3B = {
    "tokenizer_size": 128256,
    "arch": _arch(128256, 3072, 8192, 28, 24, 8, tied=True, bos=128000, eos=128001, head_dim=128, **_L3),
}
_llama3("llama3.1-8b-pure", "meta-llama/Llama-3.1-8B", "pure-llama3", "8.03B", **_LLAMA31_8B)
_llama3("llama3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", "llama3-instruct", "8.03B", **_LLAMA31_8B)
_llama3("llama3.2-1b-pure", "meta-llama/Llama-3.2-1B", "pure-llama3", "1.24B", **_LLAMA32_1B)
_llama3("llama3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", "llama3-instruct", "1.24B", **_LLAMA32_1B)
_llama3("llama3.2-3b-pure", "meta-llama/Llama-3.2-3B", "pure-llama3", "3.21B", **_LLAMA32_3B)
_llama3("llama3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "llama3-instruct", "3.21B", **_LLAMA32_3B)

# === Qwen2.5 ===
# Byte-level BPE, 151665 tokens, no BOS; 151936 embedding rows (152064 for 7B), so spare rows exist.
# The tokenizer's own pad is <|endoftext|>, which is the base models' EOS (the Pure format ends replies with
# it): add <PAD> instead (id 151665) into a spare row — nothing is resized and 0.5B-3B stay tied.
_qwen = _family("qwen2.5", "Qwen2ForCausalLM", "qwen2.modeling_qwen2.Qwen2DecoderLayer", adds_bos=False)
_QWEN25 = {  # size: (card parameters, arch facts); instruct models end turns with <|im_end|> (151645)
    "0.5B": ("0.49B", _arch(151936, 896, 4864, 24, 14, 2, tied=True, bos=151643, eos=151643)),
    "1.5B": ("1.54B", _arch(151936, 1536, 8960, 28, 12, 2, tied=True, bos=151643, eos=151643)),
    "3B": ("3.09B", _arch(151936, 2048, 11008, 36, 16, 2, tied=True, bos=151643, eos=151643)),
    "7B": ("7.61B", _arch(152064, 3584, 18944, 28, 28, 4, tied=False, bos=151643, eos=151643)),
}
for _size, (_params, _facts) in _QWEN25.items():
    _id, _hub = f"qwen2.5-{_size.lower()}", f"Qwen/Qwen2.5-{_size}"
    _qwen(f"{_id}-pure", _hub, "pure-qwen2", _params, arch=_facts, tokenizer_size=151665)
    _qwen(
        f"{_id}-instruct", f"{_hub}-Instruct", "qwen2.5-instruct", _params, arch=_facts, tokenizer_size=151665
    )

# === Gemma-2 ===
# SentencePiece, 256000 tokens = rows (a multiple of 64), <bos> added by the tokenizer; <pad> (0) is a
# reserved PAD the tokenizer declares and no prompt contains: reuse it. Embeddings are tied.
_gemma = _family(
    "gemma2",
    "Gemma2ForCausalLM",
    "gemma2.modeling_gemma2.Gemma2DecoderLayer",
    pad_token="<pad>",
    pad_policy="reuse",
)
_G2 = {"head_dim": 256, "pad_token_id": 0}
_GEMMA2_2B = {
    "tokenizer_size": 256000,
    "arch": _arch(256000, 2304, 9216, 26, 8, 4, tied=True, bos=2, eos=1, **_G2),
}
_GEMMA2_9B = {
    "tokenizer_size": 256000,
    "arch": _arch(256000, 3584, 14336, 42, 16, 8, tied=True, bos=2, eos=1, **_G2),
}
_gemma("gemma2-2b-pure", "google/gemma-2-2b", "pure-gemma2", "2.61B", **_GEMMA2_2B)
_gemma("gemma2-2b-instruct", "google/gemma-2-2b-it", "gemma2-instruct", "2.61B", **_GEMMA2_2B)
_gemma("gemma2-9b-pure", "google/gemma-2-9b", "pure-gemma2", "9.24B", **_GEMMA2_9B)
_gemma("gemma2-9b-instruct", "google/gemma-2-9b-it", "gemma2-instruct", "9.24B", **_GEMMA2_9B)

# === Phi-3.5 ===
# LLaMA-2-style SentencePiece + 11 chat tokens (32011 tokens), 32064 rows, no BOS added
# (add_bos_token: false). The tokenizer declares <|endoftext|> (32000) as PAD; the chat format ends turns
# with <|end|> and never writes <|endoftext|>: reuse it, no new row.
_phi3 = _family(
    "phi3",
    "Phi3ForCausalLM",
    "phi3.modeling_phi3.Phi3DecoderLayer",
    adds_bos=False,
    pad_token="<|endoftext|>",
    pad_policy="reuse",
)
_phi3(
    "phi-3.5-mini-instruct",
    "microsoft/Phi-3.5-mini-instruct",
    "phi3.5-instruct",
    "3.82B",
    tokenizer_size=32011,
    arch=_arch(32064, 3072, 8192, 32, 32, 32, tied=False, bos=1, eos=32000, pad_token_id=32000),
)
