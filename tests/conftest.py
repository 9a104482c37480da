"""Shared fixtures: an isolated cache for the embedded model, and the tiny LLaMA-2 directory."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "golden" / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_BACKBONES_CACHE", str(tmp_path_factory.mktemp("llm_backbones_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A local HF-format tiny LLaMA-2 directory (config, real LLaMA-2 tokenizer, safetensors)."""
    from llm_backbones.core.backbones.embedded import embedded_model_dir

    return embedded_model_dir("llama2-tiny")


# llama.cpp's reference data (official .jinja chat templates, gguf vocabularies), where present:
# `LLAMA_CPP_MODELS_DIR`, else what `scripts/fetch_llama_cpp_models.py` extracts by default. Tests that use
# it skip without it; the committed fixtures cover the same behaviour.
LLAMA_CPP_MODELS_DEFAULT = Path.home() / ".cache" / "llm_backbones" / "llama-cpp-python-0.3.36" / "models"


@pytest.fixture(scope="session")
def llama_cpp_models_dir() -> Path:
    import os

    path = Path(os.environ.get("LLAMA_CPP_MODELS_DIR", LLAMA_CPP_MODELS_DEFAULT))
    if not (path / "templates").is_dir():
        pytest.skip(
            f"llama.cpp reference files not found at {path}: run `python scripts/fetch_llama_cpp_models.py` "
            "or set LLAMA_CPP_MODELS_DIR to .../vendor/llama.cpp/models"
        )
    return path


@pytest.fixture(scope="session")
def tiny_family_model(tmp_path_factory: pytest.TempPathFactory):
    """`get(name, **overrides) -> Path`: a local HF-format tiny model of a newer family (see
    `tests/family_assets.py`), written once per session; `name="llama2"` is the embedded tiny LLaMA-2."""
    from family_assets import write_tiny_model

    made: dict[tuple, Path] = {}

    def get(name: str, **overrides) -> Path:
        if name == "llama2" and not overrides:
            from llm_backbones.core.backbones.embedded import embedded_model_dir

            return embedded_model_dir("llama2-tiny")
        key = (name, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = write_tiny_model(name, tmp_path_factory.mktemp(name.replace(".", "_")), **overrides)
        return made[key]

    return get
