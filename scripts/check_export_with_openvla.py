#!/usr/bin/env python
"""OpenVLA's own code loads checkpoints written by `export_openvla` and gives the same actions.

Two steps, in two environments:

1. In the project's environment, export the fixture checkpoints (tests/golden/fixtures/openvla_policy, rebuilt
   from their rule by tests/vla_checkpoints.py, loaded with `load_vla(..., vision_depth=3)`):

       .venv/bin/python scripts/check_export_with_openvla.py --make-export /tmp/openvla-exports

2. In the throw-away environment with the versions OpenVLA pins (transformers 4.40.1, tokenizers 0.19.1,
   timm 0.9.16; tests/golden/fixtures/openvla_policy/PROVENANCE.md says how it was made), load each export
   with OpenVLA's classes, as a user of a released checkpoint does, and run its processor + predict_action on
   the fixture cases:

       /tmp/openvla-ref/bin/python scripts/check_export_with_openvla.py --exports /tmp/openvla-exports \\
           --openvla-mirror /work/.mirror/openvla+openvla/repo --out tests/golden/fixtures/openvla_export

   Per export folder: OpenVLA's three HF files (`prismatic/extern/hf/{configuration,modeling,processing}_
   prismatic.py`, MIT, read from the git mirror with `git show`) are copied into it, as the released
   checkpoints' hub repositories hold them beside the weights (the export names them in `auto_map` but does
   not ship OpenVLA's code); then `AutoModelForVision2Seq.from_pretrained(folder, trust_remote_code=True,
   output_loading_info=True)` and `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`, the
   `auto_map` path, with no import of OpenVLA's files by this script. Writes `result.json`: the loading
   info (missing / unexpected / mismatched keys), the classes that loaded, and per case the processor's
   input ids, the generated ids and predict_action's action, with whether they equal what OpenVLA's code
   gave on the original checkpoint (the fixture's cases.json); the export's config and the sha256 of its
   weight files (tests/integration/test_vla_export.py re-makes the export and checks both, then compares
   `load_vla(export)` with this result).

One shim, outside OpenVLA's code, as in scripts/make_openvla_fixtures.py: during `from_pretrained`,
`timm.create_model` also passes `depth=3` (the fixture towers are cut to 3 blocks). The tokenizer needs none:
the export writes BPE merges in the form tokenizers 0.19.1 reads.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
# the fixture script's helpers (stdlib only at import): one copy of the spec loader, versions, OpenVLA's files
from make_openvla_fixtures import (  # noqa: E402
    DEFAULT_MIRROR,
    HF_DIR,
    HF_FILES,
    load_spec,
    sha256,
    versions,
)

DEFAULT_OUT = REPO / "tests" / "golden" / "fixtures" / "openvla_export"
FIXTURES = REPO / "tests" / "golden" / "fixtures" / "openvla_policy"
VISION_DEPTH = 3
BF16_CHECKPOINT = "dinosiglip-224-naive"  # also exported in bf16: OpenVLA loads it in bf16 (no actions kept)


def export_facts(directory: Path) -> dict[str, Any]:
    """What identifies an export: its config (without the writer's transformers version) and the sha256 of
    its weight files."""
    config = json.loads((directory / "config.json").read_text())
    config.pop("transformers_version", None)
    weights = sorted(p.name for p in directory.glob("*.safetensors"))
    return {"config": config, "weights_sha256": {name: sha256(directory / name) for name in weights}}


# ------------------------------------------------------------------------------------ step 1: our library
def make_exports(root: Path, names: list[str]) -> None:
    """Each fixture checkpoint rebuilt, loaded with load_vla and exported (fp32) to root/<name>; the first
    fused one also in bf16 to root/<name>-bf16."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from llm_backbones.vla.export import export_openvla
    from llm_backbones.vla.loading import load_vla
    from vla_checkpoints import write_hf_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="openvla-fixture-") as tmp:
        for name in names:
            source = write_hf_checkpoint(name, Path(tmp) / name)
            policy = load_vla(source, vision_depth=VISION_DEPTH)
            export_openvla(policy, root / name, overwrite=True)
            if name == BF16_CHECKPOINT:
                export_openvla(policy, root / f"{name}-bf16", dtype=torch.bfloat16, overwrite=True)
            shutil.rmtree(source)
            print(f"exported {name}", flush=True)


# ------------------------------------------------------------------------------------ step 2: OpenVLA's code
def openvla_files(mirror: Path, commit: str) -> tuple[str, dict[str, bytes]]:
    resolved = subprocess.run(
        ["git", "-C", str(mirror), "rev-parse", commit], check=True, capture_output=True, text=True
    ).stdout.strip()
    files = {
        name: subprocess.run(
            ["git", "-C", str(mirror), "show", f"{resolved}:{HF_DIR}/{name}"], check=True, capture_output=True
        ).stdout
        for name in HF_FILES
    }
    return resolved, files


@contextlib.contextmanager
def towers_cut_to(depth: int):
    """timm.create_model also passes depth= while OpenVLA's model is built (its towers are cut)."""
    import timm

    original = timm.create_model

    def create_model(*args: Any, **kwargs: Any):
        return original(*args, depth=depth, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def load_with_openvla(directory: Path, dtype) -> tuple[Any, Any, dict[str, Any]]:
    from transformers import AutoModelForVision2Seq, AutoProcessor

    with towers_cut_to(VISION_DEPTH):
        model, info = AutoModelForVision2Seq.from_pretrained(
            directory,
            trust_remote_code=True,
            torch_dtype=dtype,
            attn_implementation="sdpa",  # 4.40.1's default; eager cannot run predict_action (PROVENANCE.md)
            output_loading_info=True,
        )
    model.eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    facts = {
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "processor_class": f"{type(processor).__module__}.{type(processor).__name__}",
        "image_processor_class": type(processor.image_processor).__name__,
        "tokenizer_class": type(processor.tokenizer).__name__,
        "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
        "parameter_dtypes": dtypes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "towers_blocks": [
            len(t.blocks)
            for t in (
                model.vision_backbone.featurizer,
                getattr(model.vision_backbone, "fused_featurizer", None),
            )
            if t is not None
        ],
        "attn_implementation": model.config._attn_implementation,
    }
    assert type(model).__name__ == "OpenVLAForActionPrediction", facts
    assert type(model).__module__.startswith("transformers_modules."), facts  # auto_map: the folder's code
    return model, processor, facts


def predict_action_keeping_ids(model, inputs) -> tuple[Any, Any]:
    """predict_action as users call it, with generate wrapped to keep the ids it returned."""
    seen: dict[str, Any] = {}
    generate = model.generate

    def kept_generate(*args: Any, **kwargs: Any):
        seen["out"] = generate(*args, **kwargs)
        return seen["out"]

    model.generate = kept_generate
    try:
        action = model.predict_action(**inputs, unnorm_key="bridge_orig", do_sample=False)
    finally:
        del model.generate
    return action, seen["out"]


def run_cases(model, processor, name: str, spec) -> list[dict[str, Any]]:
    import numpy as np
    import torch
    from PIL import Image

    original = {c["index"]: c for c in json.loads((FIXTURES / name / "cases.json").read_text())}
    out = []
    for index, size, instruction in spec.cases(name):
        inputs = processor(spec.prompt(instruction), Image.fromarray(spec.image(index, *size)))
        with torch.no_grad():
            action, out_ids = predict_action_keeping_ids(model, inputs)
        generated = out_ids[0, -len(action) :].tolist()
        ref = original[index]
        case = {
            "index": index,
            "size": list(size),
            "instruction": instruction,
            "input_ids": inputs["input_ids"][0].tolist(),
            "generated_ids": generated,
            "action": np.asarray(action, dtype=np.float64).tolist(),
            "same_as_original": {
                "input_ids": inputs["input_ids"][0].tolist() == ref["input_ids"],
                "generated_ids": generated == ref["generated_ids"],
                "action": np.asarray(action, dtype=np.float64).tolist() == ref["action"],
            },
        }
        out.append(case)
        print(f"{name} case {index}: ids {generated} same as original {case['same_as_original']}", flush=True)
    return out


def check_exports(args: argparse.Namespace) -> None:
    # the dynamic-module cache of trust_remote_code in a temporary folder; no network
    modules = tempfile.mkdtemp(prefix="hf-modules-")
    os.environ["HF_MODULES_CACHE"] = modules
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers

    assert transformers.__version__ == "4.40.1", transformers.__version__
    torch.set_num_threads(args.threads)
    spec = load_spec()
    commit, files = openvla_files(Path(args.openvla_mirror), args.openvla_commit)
    root = Path(args.exports)
    result: dict[str, Any] = {
        "openvla": {
            "from": "github.com/openvla/openvla",
            "commit": commit,
            "sha256": {f"{HF_DIR}/{n}": hashlib.sha256(b).hexdigest() for n, b in files.items()},
        },
        "how": (
            "OpenVLA's three HF files copied into each export folder; AutoModelForVision2Seq.from_pretrained("
            "folder, trust_remote_code=True, attn_implementation='sdpa', output_loading_info=True) and "
            "AutoProcessor.from_pretrained(folder, trust_remote_code=True); processor(prompt, image) then "
            "predict_action(**inputs, unnorm_key='bridge_orig', do_sample=False); timm.create_model given "
            f"depth={VISION_DEPTH} while the model is built"
        ),
        "checkpoints": {},
    }
    names = [n for n in spec.CHECKPOINTS if (root / n).is_dir()]
    assert names, f"no export folders under {root}"
    for name in names:
        directory = root / name
        facts = export_facts(directory)
        for file, blob in files.items():
            (directory / file).write_bytes(blob)
        model, processor, loaded = load_with_openvla(directory, torch.float32)
        entry = {"export": facts, **loaded, "cases": run_cases(model, processor, name, spec)}
        result["checkpoints"][name] = entry
        del model, processor
    bf16 = root / f"{BF16_CHECKPOINT}-bf16"
    if bf16.is_dir():
        for file, blob in files.items():
            (bf16 / file).write_bytes(blob)
        facts = export_facts(bf16)
        model, _, loaded = load_with_openvla(bf16, torch.bfloat16)
        result["bf16"] = {"checkpoint": BF16_CHECKPOINT, "export": facts, **loaded}
        del model
    result["versions"] = versions()
    result["torch_threads"] = torch.get_num_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(modules, ignore_errors=True)
    problems = [
        f"{name}: {entry['loading_info']}"
        for name, entry in result["checkpoints"].items()
        if any(entry["loading_info"].values())
    ]
    problems += [
        f"{name} case {c['index']}: {c['same_as_original']}"
        for name, entry in result["checkpoints"].items()
        for c in entry["cases"]
        if not all(c["same_as_original"].values())
    ]
    print(f"wrote {out / 'result.json'}; problems: {problems or 'none'}")
    if problems:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-export", metavar="DIR", help="step 1 (project venv): write the exports here")
    parser.add_argument("--checkpoints", nargs="*", help="fixture names for --make-export (default: all)")
    parser.add_argument("--exports", metavar="DIR", help="step 2 (OpenVLA's env): the exports to check")
    parser.add_argument(
        "--openvla-mirror", default=str(DEFAULT_MIRROR), help="git directory of openvla/openvla"
    )
    parser.add_argument("--openvla-commit", default="HEAD")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if bool(args.make_export) == bool(args.exports):
        parser.error("pass exactly one of --make-export DIR (step 1) and --exports DIR (step 2)")
    if args.make_export:
        make_exports(Path(args.make_export), args.checkpoints or list(load_spec().CHECKPOINTS))
    else:
        check_exports(args)


if __name__ == "__main__":
    main()
