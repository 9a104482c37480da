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
    from llm_backbones.embedded import embedded_model_dir

    return embedded_model_dir("llama2-tiny")
