"""Import cost: `import llm_backbones`, `llm-backbones --help` and `llm-backbones list` load neither torch nor
transformers (nor the server's fastapi / uvicorn).

Each case runs in a fresh interpreter and reports which heavy modules ended up in `sys.modules`: transformers'
modeling code (`transformers.modeling_utils`, `transformers.models.<family>.modeling_<family>`) and torch's
FSDP and distributed checkpointing. (`import torch` itself imports `torch.distributed`, so that one is not
checked.) How long these take is measured by `benchmarks/bench_import.py`, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MARKER = "@@loaded-modules@@"

CHILD = f"""
import contextlib, io, json, re, sys
heavy = re.compile(
    r"transformers\\.modeling_utils$|transformers\\.models\\.[^.]+\\.modeling_[^.]+$"
    r"|torch\\.distributed\\.fsdp$|torch\\.distributed\\.checkpoint$"
)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    exec(sys.argv[1])
print({MARKER!r} + json.dumps({{
    "heavy": sorted(m for m in sys.modules if heavy.match(m)),
    "torch": "torch" in sys.modules,
    "transformers": "transformers" in sys.modules,
    "server": sorted(m for m in ("fastapi", "uvicorn", "starlette", "json_numpy") if m in sys.modules),
    "stdout": out.getvalue(),
}}))
"""

CLI = """
from llm_backbones.app.cli import app
try:
    app({args!r}, prog_name="llm-backbones", standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
"""


def loaded_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; what it loaded (and what it printed)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or MARKER not in proc.stdout:
        pytest.fail(
            f"{code!r} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.split(MARKER, 1)[1])


@pytest.mark.parametrize(
    "code",
    ["import llm_backbones", "import llm_backbones; llm_backbones.__version__"],
    ids=["import", "version"],
)
def test_package_face_loads_neither_torch_nor_transformers(code: str) -> None:
    loaded = loaded_after(code)
    assert loaded["heavy"] == []
    assert (loaded["torch"], loaded["transformers"]) == (False, False)


def test_help_loads_no_model_code() -> None:
    loaded = loaded_after(CLI.format(args=["--help"]))
    assert "list" in loaded["stdout"] and "serve" in loaded["stdout"]  # the help was really printed
    assert loaded["heavy"] == [] and loaded["server"] == []
    assert (loaded["torch"], loaded["transformers"]) == (False, False)


def test_list_loads_neither_torch_nor_transformers() -> None:
    # the registry holds class and dtype names, imported on first read (not by a listing)
    loaded = loaded_after(CLI.format(args=["list", "--json"]))
    assert "llama2-7b-pure" in {row["id"] for row in json.loads(loaded["stdout"])}
    assert loaded["heavy"] == [] and loaded["server"] == []
    assert (loaded["torch"], loaded["transformers"]) == (False, False)


def test_every_public_name_resolves_to_the_module_the_face_names() -> None:
    import importlib

    import llm_backbones

    for name, module in llm_backbones._EXPORTS.items():
        value = getattr(llm_backbones, name)
        assert value is getattr(importlib.import_module(module), name), name
        defined_in = getattr(value, "__module__", None)
        if isinstance(value, type) or callable(value) and defined_in:  # classes and functions: defined there
            assert defined_in == module, (name, defined_in, module)
    assert set(llm_backbones.__all__) == {"__version__", *llm_backbones._EXPORTS}


REFUSED = """
from llm_backbones.app.cli import app
try:
    code = app({args!r}, prog_name="llm-backbones", standalone_mode=False)
except SystemExit as exc:
    code = exc.code
print("exit", code)
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune", "--backbone", "llama2-tiny-pure", "--mode", "qlora"], "Unknown fine-tune mode"),
        (
            ["finetune", "--backbone", "llama2-tiny-pure", "--lora-dropout", "1.5"],
            "--lora-dropout must be in",
        ),
        (["finetune-vla", "--llm", "x", "--vision", "y", "--steps", "0"], "--steps must be >= 1"),
    ],
    ids=["finetune-mode", "finetune-lora-dropout", "finetune-vla-steps"],
)
def test_a_bad_setting_is_refused_before_torch_loads(args, message) -> None:
    """The settings table is checked before anything heavy: a bad flag is one line, not seconds of imports."""
    loaded = loaded_after(REFUSED.format(args=args))
    assert message in loaded["stdout"] and "exit 1" in loaded["stdout"]
    assert (loaded["torch"], loaded["transformers"]) == (False, False)
