"""Convert the vocabularies llama.cpp ships into the HF fast tokenizers of the newer backbone families.

Source: `vendor/llama.cpp/models/ggml-vocab-*.gguf` inside the PyPI source distribution of
`llama-cpp-python` (`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`). Each vocabulary
comes with reference tokenizations (`.inp`/`.out`); every conversion here reproduces all 46 of them
(checked by `tests/golden/test_family_tokenizers.py`).

One output directory per family (`tokenizer.json` + `tokenizer_config.json`):

- `llama3`  from `ggml-vocab-llama-bpe.gguf` (Llama 3, 128000 byte-level BPE tokens + 256 special tokens).
  Llama 3.1/3.2 kept every id and merge and renamed reserved special tokens; the Llama 3.1 names
  are applied here (see `LLAMA31_SPECIAL_NAMES`), so `<|finetune_right_pad_id|>` (128004) exists.
  `ignore_merges=True` as in Meta's tokenizer.json: a pre-token that is itself a vocabulary entry is
  emitted whole (without it 1 of the 46 reference vectors differs: "Cửa Việt").
- `qwen2`   from `ggml-vocab-qwen2.gguf` (Qwen2 BPE, 151643 tokens + `<|endoftext|>`, `<|im_start|>`,
  `<|im_end|>`); Qwen2.5 uses the same tokens and merges and adds 19 more control tokens at 151646..151664
  (`QWEN25_EXTRA_TOKENS`). The gguf's `[PAD151646]..` filler names of unused embedding rows are dropped.
- `phi3`    from `ggml-vocab-phi-3.gguf` (the LLaMA-2-style SentencePiece vocabulary of Phi-3 and
  Phi-3.5-mini, 32000 pieces + 11 chat tokens at 32000..32010). The pipeline is the LLaMA-2 one of
  `convert_llama2_tokenizer.py`; the chat tokens strip the whitespace on their right (`rstrip`), as in
  Microsoft's tokenizer.json; no BOS is added (Phi-3.5-mini-instruct's `add_bos_token: false`).
- `gpt2`    from `ggml-vocab-gpt-2.gguf`: GPT-2's byte-level BPE (50257 tokens), the closest available
  stand-in for Phi-2's CodeGen tokenizer (GPT-2's vocabulary and merges plus 38 whitespace-run tokens
  at 50257..50294, which are not reproduced).

Usage: python scripts/convert_gguf_tokenizers.py MODELS_DIR OUT_DIR [family ...]
  MODELS_DIR is `.../vendor/llama.cpp/models`; each family lands in OUT_DIR/<family>/.
  With `--xz`, tokenizer.json is also written xz-compressed (`tokenizer.json.xz`) and the plain file removed.
Needs the `gguf` package (a development tool, not a dependency of the library).
"""

from __future__ import annotations

import json
import lzma
import sys
from collections.abc import Callable
from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

sys.path.insert(0, str(Path(__file__).parent))
from convert_llama2_tokenizer import spm_merges  # noqa: E402  (the SentencePiece merge ranking)

# llama.cpp token types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# The pre-tokenizer regexes of the families' own tokenizer.json files (Llama 3 groups up to three
# digits; Qwen2 splits every digit).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _reader(path: Path, expected_model: str) -> GGUFReader:
    reader = GGUFReader(str(path))
    model = reader.fields["tokenizer.ggml.model"].contents()
    if model != expected_model:
        raise ValueError(f"{path} holds a {model!r} vocabulary; expected {expected_model!r}")
    return reader


def _tokens_and_types(reader: GGUFReader) -> tuple[list[str], list[int]]:
    fields = reader.fields
    return list(fields["tokenizer.ggml.tokens"].contents()), [
        int(t) for t in fields["tokenizer.ggml.token_type"].contents()
    ]


# === Llama 3.1 / 3.2 ===
def llama31_special_name(token_id: int) -> str:
    """The Llama 3.1 name of special token `token_id` (128000..128255)."""
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128002: "<|reserved_special_token_0|>",
        128003: "<|reserved_special_token_1|>",
        128004: "<|finetune_right_pad_id|>",
        128005: "<|reserved_special_token_2|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
    }
    return named.get(token_id, f"<|reserved_special_token_{token_id - 128008}|>")


def _byte_level_bpe(
    reader: GGUFReader, keep: int, *, ignore_merges: bool
) -> tuple[Tokenizer, list[str], list[int]]:
    tokens, types = _tokens_and_types(reader)
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tokens[i]: i for i in range(keep) if types[i] == _NORMAL}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False))
    tok.decoder = decoders.ByteLevel()
    return tok, tokens, types


def build_llama3(models_dir: Path) -> tuple[Tokenizer, dict]:
    reader = _reader(models_dir / "ggml-vocab-llama-bpe.gguf", "gpt2")
    tok, tokens, types = _byte_level_bpe(reader, 128000, ignore_merges=True)
    if len(tokens) != 128256 or any(t != _CONTROL for t in types[128000:]):
        raise ValueError("ggml-vocab-llama-bpe.gguf is not the 128000 + 256 special-token Llama 3 vocabulary")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.add_special_tokens(
        [AddedToken(llama31_special_name(i), normalized=False, special=True) for i in range(128000, 128256)]
    )
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", 128000)],
            ),
        ]
    )
    config = {
        # As meta-llama/Llama-3.2-1B's tokenizer_config.json (base: EOS <|end_of_text|>; the instruct
        # repos set <|eot_id|>); no pad token is declared there.
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return tok, config


# === Qwen2.5 ===
QWEN25_EXTRA_TOKENS: list[tuple[str, bool]] = [
    # (content, special) for ids 151646..151664, as in Qwen/Qwen2.5-*'s tokenizer_config.json.
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]


def build_qwen2(models_dir: Path) -> tuple[Tokenizer, dict]:
    reader = _reader(models_dir / "ggml-vocab-qwen2.gguf", "gpt2")
    tok, tokens, types = _byte_level_bpe(reader, 151643, ignore_merges=False)
    if tokens[151643:151646] != ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        raise ValueError("ggml-vocab-qwen2.gguf does not have Qwen2's control tokens at 151643..151645")
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [AddedToken(t, normalized=False, special=True) for t in tokens[151643:151646]]
    added += [AddedToken(t, normalized=False, special=s) for t, s in QWEN25_EXTRA_TOKENS]
    for token in added:  # one at a time, in id order: special and non-special ones interleave
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
    config = {
        # As Qwen/Qwen2.5-*'s tokenizer_config.json: no BOS, EOS <|endoftext|> (base; instruct: <|im_end|>),
        # pad <|endoftext|>.
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return tok, config


# === Phi-3 / Phi-3.5 ===
def build_phi3(models_dir: Path) -> tuple[Tokenizer, dict]:
    reader = _reader(models_dir / "ggml-vocab-phi-3.gguf", "llama")
    tokens, types = _tokens_and_types(reader)
    scores = [float(s) for s in reader.fields["tokenizer.ggml.scores"].contents()]
    n_pieces = 32000
    pieces, piece_scores = tokens[:n_pieces], scores[:n_pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=spm_merges(pieces, piece_scores),
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    chat = [t for i, t in enumerate(tokens) if i >= n_pieces and types[i] == _CONTROL]
    if chat[:2] != ["<|endoftext|>", "<|assistant|>"] or len(chat) != 11:
        raise ValueError(f"ggml-vocab-phi-3.gguf: unexpected chat tokens {chat}")
    specials = [AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>")]
    specials.append(AddedToken("</s>", normalized=False, special=True, rstrip=True))
    specials.append(AddedToken("<|endoftext|>", normalized=False, special=True))
    # Microsoft's tokenizer.json: the chat tokens swallow the whitespace after them (rstrip).
    specials += [AddedToken(t, normalized=False, special=True, rstrip=True) for t in chat[1:]]
    tok.add_special_tokens(specials)
    config = {
        # As microsoft/Phi-3.5-mini-instruct's tokenizer_config.json.
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return tok, config


# === GPT-2 (stand-in for Phi-2's CodeGen tokenizer) ===
def build_gpt2(models_dir: Path) -> tuple[Tokenizer, dict]:
    reader = _reader(models_dir / "ggml-vocab-gpt-2.gguf", "gpt2")
    tok, tokens, _ = _byte_level_bpe(reader, 50256, ignore_merges=False)
    if tokens[50256] != "<|endoftext|>" or len(tokens) != 50257:
        raise ValueError("ggml-vocab-gpt-2.gguf is not GPT-2's 50257-token vocabulary")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", normalized=False, special=True)])
    config = {
        # As microsoft/phi-2's tokenizer_config.json: <|endoftext|> is BOS, EOS and UNK; no BOS is added;
        # no pad token.
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": True,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return tok, config


BUILDERS: dict[str, Callable[[Path], tuple[Tokenizer, dict]]] = {
    "llama3": build_llama3,
    "qwen2": build_qwen2,
    "phi3": build_phi3,
    "gpt2": build_gpt2,
}


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    if len(args) < 2:
        print(__doc__)
        return 2
    models_dir, out = Path(args[0]), Path(args[1])
    families = args[2:] or list(BUILDERS)
    for family in families:
        tok, config = BUILDERS[family](models_dir)
        target = out / family
        target.mkdir(parents=True, exist_ok=True)
        text = tok.to_str(pretty=False)
        if "--xz" in argv:
            (target / "tokenizer.json.xz").write_bytes(
                lzma.compress(text.encode(), preset=9 | lzma.PRESET_EXTREME)
            )
            (target / "tokenizer.json").unlink(missing_ok=True)
        else:
            (target / "tokenizer.json").write_text(text, encoding="utf-8")
        (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        print(f"{family}: {tok.get_vocab_size(with_added_tokens=True)} tokens -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
