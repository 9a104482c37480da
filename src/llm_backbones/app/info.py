"""Everything about one backbone id, without downloading anything.

From the registry's recorded architecture facts (or, with `model_path`, from that directory's
config.json and tokenizer): the vocabulary before and after PAD, the embedding rows after padding, the
special token ids, the BOS and pad policies, the FSDP unit, the dtype, and the parameters each fine-tune
mode trains — counted on the real architecture built on the meta device (no memory, no download).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llm_backbones.core.backbones import files
from llm_backbones.core.registry import BackboneSpec, get_spec
from llm_backbones.training.finetune import trainable_counts_by_mode


def backbone_info(backbone_id: str, model_path: str | Path | None = None) -> dict[str, Any]:
    """A dict of facts about `backbone_id` (see module docstring); `model_path` reads a local checkpoint."""
    spec = get_spec(backbone_id)
    if model_path is not None or spec.embedded is not None:
        facts = _local_facts(spec, model_path)
    else:
        facts = {
            "source": spec.source,
            "config": dict(spec.arch),
            "tokenizer_size": spec.tokenizer_size,
            "pad_token_id": spec.arch.get("pad_token_id")
            if spec.pad_policy == "reuse"
            else spec.tokenizer_size,
            "bos_token_id": spec.arch.get("bos_token_id"),
            "eos_token_id": spec.arch.get("eos_token_id"),
        }
    config = dict(facts["config"])
    tokens_after = facts["tokenizer_size"] + (
        1 if spec.pad_policy == "add" and facts.pop("pad_is_new", True) else 0
    )
    if "source_files" in facts:  # a local checkpoint: its tokenizer must fit its embedding (as the loader's)
        files.check_tokenizer_fits(
            tokens_after,
            config["vocab_size"],
            tokenizer_from=facts["source"],
            rows_from=f"{facts['source']}/config.json (vocab_size)",
        )
    rows = spec.embedding_rows(config["vocab_size"], tokens_after)
    llm_config = spec.llm_cls.config_class(**{**config, "vocab_size": rows})
    with torch.device("meta"):
        llm = spec.llm_cls._from_config(llm_config)
    modes = trainable_counts_by_mode(llm)
    return {
        "id": backbone_id,
        "llm_family": spec.llm_family,
        "hf_hub_path": spec.hf_hub_path,
        "facts_source": facts["source"],
        "model_class": spec.llm_cls.__name__,
        "decoder_layer": spec.layer_cls.__name__,
        "half_precision_dtype": str(spec.half_precision_dtype).removeprefix("torch."),
        "prompt_builder": spec.prompt_builder_fn.__name__,
        "adds_bos": spec.adds_bos,
        "hidden_size": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "attention_heads": config["num_attention_heads"],
        "kv_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
        "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
        "vocab_before_pad": facts["tokenizer_size"],
        "vocab_after_pad": tokens_after,
        "pad_policy": spec.pad_policy_text,
        "pad_token": spec.pad_token,
        "pad_token_id": facts["pad_token_id"],
        "embedding_rows_before": config["vocab_size"],
        "embedding_rows_after": rows,
        "bos_token_id": facts["bos_token_id"],
        "eos_token_id": facts["eos_token_id"],
        "parameters": modes["full"].total,
        "trainable_by_mode": {mode: summary.trainable for mode, summary in modes.items()},
        "lora_total_parameters": modes["lora"].total,
    }


def _local_facts(spec: BackboneSpec, model_path: str | Path | None) -> dict[str, Any]:
    """Facts read from a local checkpoint (or the embedded default's packaged config and tokenizer), through
    the loaders' own readers (`files.read_config`, `loading.load_tokenizer`): a broken file raises their
    typed error naming it."""
    from llm_backbones.core.backbones import loading
    from llm_backbones.core.backbones.embedded import ASSETS_DIR
    from llm_backbones.errors import ModelPathError

    path = Path(model_path).expanduser() if model_path is not None else ASSETS_DIR / spec.embedded
    if not path.is_dir():
        raise ModelPathError(
            f"model_path={str(path)!r} is not a directory; point it at an HF-format checkpoint directory."
        )
    files.check_local_files(path, allow_external=False)
    config = files.read_config(path)
    if not isinstance(config.get("vocab_size"), int):
        from llm_backbones.errors import ConfigMismatchError

        raise ConfigMismatchError(
            f"{path}/config.json has no vocab_size (got {config.get('vocab_size')!r:.40}): every model's "
            "config names its embedding rows. Restore config.json from the original checkpoint."
        )
    # the tokenizer a backbone of this id loads from `path` (LLaMA-2 / Mistral: tokenizer.json as written)
    tokenizer = loading.load_tokenizer(spec, path, local=True)
    vocab = tokenizer.get_vocab()
    if spec.pad_policy == "reuse":
        pad_id, new = vocab.get(spec.pad_token), False
    else:
        new = spec.pad_token not in vocab
        pad_id = len(tokenizer) if new else vocab[spec.pad_token]
    return {
        "source": str(path),
        "source_files": True,
        "config": {
            k: v
            for k, v in config.items()
            if k not in ("architectures", "model_type", "torch_dtype", "dtype")
        },
        "tokenizer_size": len(tokenizer) - (0 if new or spec.pad_policy == "reuse" else 1),
        "pad_is_new": new,
        "pad_token_id": pad_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
