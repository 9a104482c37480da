"""The embedded default backbone: a tiny LLaMA-2 with the real LLaMA-2 tokenizer, no network needed.

The package ships its config and tokenizer (`assets/<name>/`). Its weights are made once from a fixed
seed and written, atomically, into a cache directory as an ordinary HF checkpoint, so the backbone then
loads through the same `from_pretrained` path as any hub model. Making them leaves the caller's random state
as it was, and is safe from several threads or processes at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from llm_backbones import _fs
from llm_backbones.errors import ModelPathError, OutputPathError

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
WEIGHTS_SEED = 0
_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")

# Held while transformers constructs a model. It swaps process-wide state meanwhile (torch's default dtype,
# torch.nn.init's functions, PreTrainedModel.init_weights) and restores it after, so two constructions in two
# threads must not interleave, or the restores run out of order and leave the swapped state behind. Every
# backbone build holds it too (`llm_backbones.core.backbones.loading`).
MODEL_BUILD_LOCK = threading.RLock()


def cache_root() -> Path:
    """`$LLM_BACKBONES_CACHE`, else `~/.cache/llm_backbones`."""
    env = os.environ.get("LLM_BACKBONES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "llm_backbones"


def embedded_model_dir(name: str) -> Path:
    """The local HF-format directory of embedded model `name`, creating its weights if needed."""
    src = ASSETS_DIR / name
    if not (src / "config.json").is_file():
        known = sorted(p.name for p in ASSETS_DIR.iterdir() if (p / "config.json").is_file())
        raise ModelPathError(
            f"No embedded model {name!r} in {ASSETS_DIR}; known: {known}. Reinstall llm-backbones (the "
            "package data is missing) or register the id with the right `embedded=` name."
        )
    digest = hashlib.sha256()
    for f in _FILES:
        digest.update((src / f).read_bytes())
    digest.update(f"seed={WEIGHTS_SEED};torch={torch.__version__.split('+')[0]}".encode())
    target = cache_root() / f"{name}-{digest.hexdigest()[:12]}"
    if (target / "model.safetensors").is_file():
        return target
    with MODEL_BUILD_LOCK:
        if (target / "model.safetensors").is_file():  # another thread made it meanwhile
            return target
        try:
            _create(src, target)
        except PermissionError as exc:
            raise OutputPathError(
                f"Cannot create the weights of embedded model {name!r} in the cache {target.parent}: "
                f"permission denied ({exc.filename or target.parent}). Point LLM_BACKBONES_CACHE at a "
                "writable directory (e.g. `export LLM_BACKBONES_CACHE=/tmp/llm_backbones`), or make the "
                "cache writable."
            ) from None
    logger.info("Created the weights of embedded model %s in %s (seed %d)", name, target, WEIGHTS_SEED)
    return target


def _create(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # atomic: readers see no half-written checkpoint; a process that made it first keeps its copy.
        # Mode 0o700: readable by this user only, as the tempfile.mkdtemp it used to be made with.
        with _fs.atomic_dir(target, replace=False, mode=0o700) as tmp:
            config = AutoConfig.from_pretrained(src)
            with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
                torch.manual_seed(WEIGHTS_SEED)
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            # Written directly, not with save_pretrained: under torchrun, transformers writes weights on
            # rank 0 only, and every rank may be the one creating the cache.
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            for f in _FILES:
                shutil.copy2(src / f, tmp / f)
    except FileExistsError:
        if not (target / "model.safetensors").is_file():  # lost a race only if the winner finished
            raise
