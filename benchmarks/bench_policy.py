"""One policy step, image + instruction -> action: `VLAPolicy.predict_action` against OpenVLA's own
`processor(...)` + `predict_action(...)`, on the same checkpoint, in one run.

The checkpoint is the fused `dinosiglip-224-naive` of tests/golden/fixtures/openvla_policy (OpenVLA's real
DINOv2 + SigLIP architecture with towers cut to 3 blocks, a tiny LLaMA-2; weights from the fixtures' rule).
Ours is timed here; OpenVLA's runs in the throw-away environment that made the fixtures
(scripts/make_openvla_fixtures.py --time N, transformers 4.40.1 / timm 0.9.16), started from this script
when `--reference-python` is given, so both numbers come from one run on one machine. Prints JSON.

    python benchmarks/bench_policy.py [--n 20] [--batch 8] [--reference-python /tmp/openvla-ref/bin/python \
        --openvla-mirror /work/.mirror/openvla+openvla/repo] [--out benchmarks/results/DATE-policy-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _common import cpu_description

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import openvla_reference_spec as spec  # noqa: E402
from llm_backbones.vla.loading import load_vla  # noqa: E402
from vla_checkpoints import write_hf_checkpoint  # noqa: E402

NAME = "dinosiglip-224-naive"


def _times(fn, n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reference-python", type=Path)
    parser.add_argument("--openvla-mirror", type=Path, default=Path("/work/.mirror/openvla+openvla/repo"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    case = spec.cases(NAME)[0]
    image = spec.image(case[0], *case[1])
    result: dict = {"device": cpu_description(), "torch": torch.__version__, "checkpoint": NAME}
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_vla(write_hf_checkpoint(NAME, Path(tmp) / NAME), vision_depth=spec.VISION_DEPTH)
        import transformers

        result["transformers"] = transformers.__version__
        ours = _times(lambda: policy.predict_action(image, case[2], unnorm_key="bridge_orig"), args.n)
        result["ours_predict_action"] = _summary(ours)
        images = [spec.image(i, *spec.IMAGE_SIZES[i % len(spec.IMAGE_SIZES)]) for i in range(args.batch)]
        texts = [spec.INSTRUCTIONS[i % len(spec.INSTRUCTIONS)] for i in range(args.batch)]
        batch = _times(
            lambda: policy.predict_actions(images, texts, unnorm_key="bridge_orig"), max(3, args.n // 4)
        )
        result[f"ours_predict_actions_batch{args.batch}"] = {
            **_summary(batch),
            "per_action_ms": round(statistics.median(batch) / args.batch, 2),
        }
    if args.reference_python is not None:
        out = subprocess.run(
            [
                str(args.reference_python),
                str(ROOT / "scripts" / "make_openvla_fixtures.py"),
                "--openvla-mirror",
                str(args.openvla_mirror),
                "--time",
                str(args.n),
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        reference = json.loads(out.stdout.strip().splitlines()[-1])
        result["openvla_predict_action"] = reference
        result["speedup_vs_openvla"] = round(
            reference["median_ms"] / result["ours_predict_action"]["median_ms"], 2
        )
        result["speedup_batched_per_action_vs_openvla"] = round(
            reference["median_ms"] / result[f"ours_predict_actions_batch{args.batch}"]["per_action_ms"], 2
        )
    result["date"] = date.today().isoformat()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
