"""Fetch llama.cpp's reference vocabularies and official chat templates from PyPI (no model hub needed).

They ship in the source distribution of `llama-cpp-python` under `vendor/llama.cpp/models/`:
`ggml-vocab-*.gguf` with their `.inp`/`.out` reference tokenizations, and `templates/*.jinja` (the
`chat_template` of many instruct models). Only those files are extracted, into
`~/.cache/llm_backbones/llama-cpp-python-<version>/models` (or OUT_DIR).

Used by:
- `scripts/convert_gguf_tokenizers.py` / `scripts/convert_llama2_tokenizer.py` (re-create the converted
  tokenizers), and
- `tests/golden/test_family_chat_templates.py`, which renders the official .jinja templates when this
  directory exists (or `LLAMA_CPP_MODELS_DIR` points at one); the golden strings cover the same cases
  without it.

Usage: python scripts/fetch_llama_cpp_models.py [--sdist PATH_TO.tar.gz] [OUT_DIR]
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
DEFAULT_OUT = Path.home() / ".cache" / "llm_backbones" / f"llama-cpp-python-{VERSION}" / "models"
_PREFIX = "vendor/llama.cpp/models/"


def download_sdist(dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={VERSION}",
            "-d",
            str(dest),
        ],
        check=True,
    )
    return next(dest.glob("llama_cpp_python-*.tar.gz"))


def extract_models(sdist: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/")
            if not member.isfile() or not inner.startswith(_PREFIX):
                continue
            rel = inner[len(_PREFIX) :]
            wanted = rel.startswith("ggml-vocab-") or (
                rel.startswith("templates/") and rel.endswith(".jinja")
            )
            if not wanted or "/" in rel.removeprefix("templates/"):
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                continue
            target.write_bytes(source.read())
            count += 1
    return count


def main(argv: list[str]) -> int:
    args = argv[1:]
    sdist: Path | None = None
    if "--sdist" in args:
        i = args.index("--sdist")
        sdist = Path(args[i + 1])
        del args[i : i + 2]
    out = Path(args[0]) if args else DEFAULT_OUT
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            sdist = download_sdist(Path(tmp))
        n = extract_models(sdist, out)
    print(f"extracted {n} files into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
