"""config.json sizes and tokenizer files are checked before anything is built or allocated.

The bounds must let every released model through (their real sizes are written out below) and stop a typo
or a hostile file within a second; tokenizer files must be JSON of a plausible size and depth.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llm_backbones.core.backbones.embedded import ASSETS_DIR
from llm_backbones.core.backbones.files import (
    CONFIG_SIZE_BOUNDS,
    TOKENIZER_FILE_MAX_BYTES,
    check_config_sizes,
    check_tokenizer_files,
)
from llm_backbones.errors import ConfigMismatchError, TokenizerFileError

# The sizes of real models, from their config.json on the hub (text model of Llama-4).
REAL_CONFIGS: dict[str, dict[str, int]] = {
    "meta-llama/Llama-2-7b-hf": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "meta-llama/Llama-2-70b-hf": dict(
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
    "meta-llama/Llama-3.1-405B": dict(
        vocab_size=128256,
        hidden_size=16384,
        intermediate_size=53248,
        num_hidden_layers=126,
        num_attention_heads=128,
        num_key_value_heads=8,
        max_position_embeddings=131072,
    ),
    "meta-llama/Llama-4-Scout-17B-16E (text)": dict(
        vocab_size=202048,
        hidden_size=5120,
        intermediate_size=8192,
        num_hidden_layers=48,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=10485760,
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        vocab_size=32768,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
    ),
    "Qwen/Qwen2.5-72B": dict(
        vocab_size=152064,
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=131072,
    ),
    # hidden 4608 is not 32 heads x head_dim 128: an explicit head_dim must be accepted
    "google/gemma-2-27b": dict(
        vocab_size=256000,
        hidden_size=4608,
        intermediate_size=36864,
        num_hidden_layers=46,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        max_position_embeddings=8192,
    ),
    "google/gemma-3-27b (text)": dict(
        vocab_size=262208,
        hidden_size=5376,
        intermediate_size=21504,
        num_hidden_layers=62,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        max_position_embeddings=131072,
    ),
    "microsoft/phi-2": dict(
        vocab_size=51200,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
    ),
    "microsoft/Phi-3.5-mini-instruct": dict(
        vocab_size=32064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=131072,
    ),
}


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_every_real_model_is_within_the_bounds(name: str) -> None:
    check_config_sizes(REAL_CONFIGS[name], f"{name}/config.json")


def test_the_shipped_tiny_config_is_within_the_bounds() -> None:
    path = ASSETS_DIR / "llama2-tiny" / "config.json"
    check_config_sizes(json.loads(path.read_text()), str(path))


LLAMA = REAL_CONFIGS["meta-llama/Llama-2-7b-hf"]
BAD: list[tuple[str, dict, tuple[str, ...]]] = [
    ("heads-zero", {"num_attention_heads": 0}, ("num_attention_heads=0", "at least 1")),
    (
        "heads-not-dividing",
        {"num_attention_heads": 30},
        ("num_attention_heads=30 does not divide hidden_size=4096", "32", "explicit head_dim"),
    ),
    (
        "kv-heads-not-dividing",
        {"num_key_value_heads": 5},
        ("num_key_value_heads=5 does not divide num_attention_heads=32",),
    ),
    ("hidden-a-string", {"hidden_size": "4096"}, ("hidden_size='4096'", "an integer is needed, got str")),
    ("hidden-a-float", {"hidden_size": 4096.0}, ("hidden_size=4096.0", "got float")),
    ("hidden-a-bool", {"hidden_size": True}, ("hidden_size=True", "got bool")),
    ("intermediate-negative", {"intermediate_size": -11008}, ("intermediate_size=-11008", "at least 1")),
    ("vocab-10**12", {"vocab_size": 10**12}, ("vocab_size=1000000000000", "at most 4,194,304")),
    ("layers-10**6", {"num_hidden_layers": 10**6}, ("num_hidden_layers=1000000", "at most 1,024")),
    (
        "hidden-too-big",
        {"hidden_size": 2**20, "num_attention_heads": 32},
        ("hidden_size=1048576", "at most 65,536"),
    ),
]


@pytest.mark.parametrize(("change", "words"), [(c, w) for _, c, w in BAD], ids=[i for i, _, _ in BAD])
def test_impossible_sizes_name_file_field_value_and_fix(change: dict, words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigMismatchError) as info:
        check_config_sizes({**LLAMA, **change}, "/ckpt/config.json")
    message = str(info.value)
    for word in (*words, "/ckpt/config.json", "Fix it in /ckpt/config.json", "base model's config.json"):
        assert word in message, message


def test_bounds_are_generous_and_finite() -> None:
    for name, bound in CONFIG_SIZE_BOUNDS.items():
        assert all(config.get(name, 1) <= bound for config in REAL_CONFIGS.values()), name
    assert CONFIG_SIZE_BOUNDS["vocab_size"] == 2**22 and CONFIG_SIZE_BOUNDS["num_hidden_layers"] == 1024


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((ASSETS_DIR / "llama2-tiny" / name).read_bytes())
    return path


@pytest.mark.parametrize(
    ("change", "value", "words"),
    [
        ("num_attention_heads", 0, ("num_attention_heads=0",)),
        ("vocab_size", 10**12, ("vocab_size=1000000000000",)),
        ("num_hidden_layers", 10**6, ("num_hidden_layers=1000000",)),
    ],
)
def test_a_whole_load_fails_within_a_second_before_allocating(tiny_dir: Path, change, value, words) -> None:
    from llm_backbones import get_llm_backbone_and_tokenizer

    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps({**config, change: value}))
    start = time.perf_counter()
    with pytest.raises(ConfigMismatchError) as info:
        get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_dir)
    assert time.perf_counter() - start < 1.0
    assert all(w in str(info.value) for w in (*words, str(tiny_dir / "config.json")))


# === Tokenizer files ===
def test_the_real_tokenizer_files_pass(tiny_dir: Path) -> None:
    check_tokenizer_files(tiny_dir)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("tokenizer.json", b"{}", ("tokenizer.json", "lacks 'model', 'added_tokens'", "found keys []")),
        ("tokenizer.json", b'{"model": {}}', ("lacks 'added_tokens'",)),
        ("tokenizer.json", b"[" * 100_000 + b"]" * 100_000, ("nests JSON deeper than 64",)),
        ("tokenizer.json", b'{"a": ' * 100 + b"1" + b"}" * 100, ("nests JSON deeper than 64",)),
        ("tokenizer.json", b'{"model": ', ("is not valid JSON",)),
        ("tokenizer.json", b"\xff\xfe", ("is not valid JSON",)),
        ("tokenizer_config.json", b"[1, 2]", ("tokenizer_config.json", "holds a JSON list")),
    ],
    ids=[
        "empty-object",
        "no-added-tokens",
        "deep-array",
        "deep-object",
        "truncated",
        "not-utf8",
        "config-a-list",
    ],
)
def test_bad_tokenizer_files_are_named(tiny_dir: Path, name: str, content: bytes, words) -> None:
    (tiny_dir / name).write_bytes(content)
    with pytest.raises(TokenizerFileError) as info:
        check_tokenizer_files(tiny_dir)
    message = str(info.value)
    for word in (*words, str(tiny_dir / name), "Restore it from the base model"):
        assert word in message, message


def test_a_huge_tokenizer_file_is_refused_without_parsing(tiny_dir: Path) -> None:
    with open(tiny_dir / "tokenizer.json", "wb") as handle:
        handle.truncate(TOKENIZER_FILE_MAX_BYTES + 1)  # sparse: 64 MiB of zeros, never read
    start = time.perf_counter()
    with pytest.raises(TokenizerFileError, match=r"has 64 MiB; tokenizer files above 64 MiB are refused"):
        check_tokenizer_files(tiny_dir)
    assert time.perf_counter() - start < 0.5
