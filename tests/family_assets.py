"""Test assets of the newer backbone families: their tokenizers and tiny models built from configs.

Tokenizers (`tests/golden/fixtures/tokenizers/`, see PROVENANCE.md there):
- real, converted from llama.cpp's vocabularies by `scripts/convert_gguf_tokenizers.py` and committed
  xz-compressed: `llama3` (Llama 3.1/3.2), `qwen2` (Qwen2.5), `phi3` (Phi-3.5-mini), `gpt2` (the closest
  stand-in for Phi-2's CodeGen tokenizer: same byte-level BPE, without CodeGen's 38 whitespace tokens);
- stand-ins built here, because the real vocabularies of Mistral and Gemma are not available offline:
  `mistral-standin` and `gemma2-standin` (see their builders for what they keep of the real ones).

Tiny models: each family's architecture at hidden size 64 and two decoder layers, with the real model's
vocabulary/embedding-row count, special-token ids and tied/untied embeddings, random weights from a
fixed seed, saved as an ordinary HF checkpoint so that backbones load them through `model_path=`.
"""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

TOKENIZER_FIXTURES = Path(__file__).parent / "golden" / "fixtures" / "tokenizers"
CONVERTED = ("llama3", "qwen2", "phi3", "gpt2")


# === Tokenizers ===
def write_converted_tokenizer(name: str, out: Path) -> Path:
    """Decompress the committed conversion `name` into `out` (tokenizer.json + tokenizer_config.json)."""
    src = TOKENIZER_FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes(lzma.decompress((src / "tokenizer.json.xz").read_bytes()))
    shutil.copy2(src / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def _spm_style(vocab: dict[str, int], specials: list[AddedToken], *, bos: str, prepend: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if prepend else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocab[bos])]
    )
    return tok


def _fill(vocab: dict[str, int], size: int, stem: str) -> None:
    """Fill ids len(vocab)..size-1 with placeholder pieces (stand-ins for the real vocabulary's words)."""
    for i in range(len(vocab), size):
        vocab[f"{stem}{i}"] = i


def write_mistral_standin(out: Path) -> Path:
    """A stand-in for Mistral v0.1's tokenizer (its vocabulary is not available offline).

    Kept from the real one: SentencePiece-style BPE with byte fallback, `▁` prepended, `<unk>`=0, `<s>`=1,
    `</s>`=2, the 256 byte pieces at 3..258, BOS added, no PAD, and its size (32000), so that the PAD
    arithmetic is the real one (<PAD> = 32000, rows 32000 -> 32064). Not kept: the real pieces and merges
    (ids 259.. are placeholders; text is spelt out as single characters and bytes).
    """
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁" + "".join(chr(c) for c in range(33, 127)):
        vocab.setdefault(ch, len(vocab))
    _fill(vocab, 32000, "▁placeholder")
    specials = [AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")]
    tok = _spm_style(vocab, specials, bos="<s>", prepend=True)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


GEMMA2_STANDIN_SIZE = 1024


def write_gemma2_standin(out: Path) -> Path:
    """A stand-in for Gemma-2's tokenizer (its vocabulary is not available offline).

    Kept from the real one: `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, `<mask>`=4, `<start_of_turn>`=106,
    `<end_of_turn>`=107, SentencePiece-style BPE with byte fallback and no `▁` prepended, BOS added, PAD
    declared as `<pad>`. Not kept: its 256000 pieces (here 1024: placeholders at 5..105, bytes, single
    characters and placeholder pieces).
    """
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    _fill(vocab, 106, "<unused")
    vocab.update({"<start_of_turn>": 106, "<end_of_turn>": 107})
    vocab.update({f"<0x{b:02X}>": 108 + b for b in range(256)})
    for ch in "▁" + "".join(chr(c) for c in range(33, 127)):
        vocab.setdefault(ch, len(vocab))
    _fill(vocab, GEMMA2_STANDIN_SIZE, "▁placeholder")
    named = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
    tok = _spm_style(
        vocab, [AddedToken(t, normalized=False, special=True) for t in named], bos="<bos>", prepend=False
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def write_tokenizer(name: str, out: Path) -> Path:
    if name in CONVERTED:
        return write_converted_tokenizer(name, out)
    return {"mistral-standin": write_mistral_standin, "gemma2-standin": write_gemma2_standin}[name](out)


# === Tiny models ===
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)

# name -> (model class, config, tokenizer). Vocabulary sizes, special ids and tying are the real models'.
TINY_MODELS: dict[str, tuple[type[PreTrainedModel], PretrainedConfig, str]] = {
    "mistral": (
        MistralForCausalLM,
        MistralConfig(
            vocab_size=32000,
            num_key_value_heads=2,
            sliding_window=4096,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
            **_TINY,
        ),
        "mistral-standin",
    ),
    "phi": (
        PhiForCausalLM,
        PhiConfig(
            vocab_size=51200,
            partial_rotary_factor=0.4,
            bos_token_id=50256,
            eos_token_id=50256,
            tie_word_embeddings=False,
            **_TINY,
        ),
        "gpt2",
    ),
    # Llama 3.1 8B: untied; Llama 3.2 1B/3B: tied. Both with Llama 3's rope scaling.
    **{
        name: (
            LlamaForCausalLM,
            LlamaConfig(
                vocab_size=128256,
                num_key_value_heads=2,
                max_position_embeddings=131072,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
                rope_theta=500000.0,
                bos_token_id=128000,
                eos_token_id=128001,
                tie_word_embeddings=tied,
                **_TINY,
            ),
            "llama3",
        )
        for name, tied in (("llama3.1", False), ("llama3.2", True))
    },
    # Qwen2.5 0.5B-3B: 151936 rows, tied; 7B: 152064 rows, untied.
    **{
        name: (
            Qwen2ForCausalLM,
            Qwen2Config(
                vocab_size=rows,
                num_key_value_heads=2,
                bos_token_id=151643,
                eos_token_id=151643,
                tie_word_embeddings=tied,
                **_TINY,
            ),
            "qwen2",
        )
        for name, rows, tied in (("qwen2.5-small", 151936, True), ("qwen2.5-7b", 152064, False))
    },
    "gemma2": (
        Gemma2ForCausalLM,
        Gemma2Config(
            vocab_size=GEMMA2_STANDIN_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
            tie_word_embeddings=True,
        ),
        "gemma2-standin",
    ),
    "phi3": (
        Phi3ForCausalLM,
        Phi3Config(
            vocab_size=32064,
            num_key_value_heads=4,
            bos_token_id=1,
            eos_token_id=32000,
            pad_token_id=32000,
            tie_word_embeddings=False,
            **_TINY,
        ),
        "phi3",
    ),
}


def write_tiny_model(name: str, out: Path, *, vocab_size: int | None = None, seed: int = 0) -> Path:
    """Save tiny model `name` (optionally with another embedding-row count) with its tokenizer into `out`."""
    llm_cls, config, tokenizer = TINY_MODELS[name]
    config = config.__class__.from_dict(config.to_dict())
    if vocab_size is not None:
        config.vocab_size = vocab_size
    torch.manual_seed(seed)
    model = llm_cls(config)
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(tokenizer, out)
    return out


def tiny_config(name: str) -> dict[str, Any]:
    return TINY_MODELS[name][1].to_dict()
