"""Convert the LLaMA-2 SentencePiece vocabulary shipped with llama.cpp into an HF fast tokenizer.

Source: `vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf` inside the PyPI source distribution of
`llama-cpp-python` (fetch it with
`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`). The vocabulary is Meta's
LLaMA-2 tokenizer (32000 pieces with their SentencePiece scores); see PROVENANCE.md beside the output.

The pipeline is the one of the original `meta-llama/Llama-2-7b-hf` fast tokenizer: a BPE model with
byte fallback whose merges are ranked by the score of the merged piece, a normalizer that prepends
`▁` and replaces every space by `▁`, *no* pre-tokenizer (a Metaspace pre-tokenizer, which the gguf
loader of transformers builds, drops the `▁` of inputs that start with a space), and a post-processor
that adds BOS. It reproduces all 46 reference tokenizations of `ggml-vocab-llama-spm.gguf.inp/.out`.

Usage: python scripts/convert_llama2_tokenizer.py PATH/TO/ggml-vocab-llama-spm.gguf OUT_DIR
Needs the `gguf` package (a development tool, not a dependency of the library).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

# llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte.
_CONTROL, _UNKNOWN = 3, 2


def read_gguf_vocab(path: Path) -> tuple[list[str], list[float], list[int]]:
    reader = GGUFReader(str(path))
    fields = reader.fields
    model = fields["tokenizer.ggml.model"].contents()
    if model != "llama":
        raise ValueError(f"{path} holds a {model!r} vocabulary; expected the SentencePiece 'llama' one")
    return (
        list(fields["tokenizer.ggml.tokens"].contents()),
        [float(s) for s in fields["tokenizer.ggml.scores"].contents()],
        [int(t) for t in fields["tokenizer.ggml.token_type"].contents()],
    )


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every (left, right) split of a vocabulary piece into two pieces, best-scored merged piece first.

    SentencePiece BPE merges the adjacent pair whose concatenation has the highest score; a BPE model
    reproduces that when merges are ranked by the merged piece's score (ties by the pieces' ids).
    """
    vocab = {piece: i for i, piece in enumerate(tokens)}
    ranked = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[piece_id], piece_id, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(tokens: list[str], scores: list[float], types: list[int]) -> Tokenizer:
    vocab = {piece: i for i, piece in enumerate(tokens)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=spm_merges(tokens, scores),
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
    specials = [tokens[i] for i, t in enumerate(types) if t in (_CONTROL, _UNKNOWN)]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


TOKENIZER_CONFIG = {
    # Same keys and values as meta-llama/Llama-2-7b-hf's tokenizer_config.json, except the class:
    # the generic fast tokenizer loads tokenizer.json exactly as written (the Llama class of
    # transformers 5 may rebuild the pipeline with a Metaspace pre-tokenizer).
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 4096,
    "padding_side": "right",
    "tokenizer_class": "PreTrainedTokenizerFast",
}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    src, out = Path(argv[1]), Path(argv[2])
    tokens, scores, types = read_gguf_vocab(src)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tokens, scores, types).save(str(out / "tokenizer.json"), pretty=False)
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    print(f"wrote {out}/tokenizer.json ({len(tokens)} pieces) and tokenizer_config.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
