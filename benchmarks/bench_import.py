"""Import cost: `import llm_backbones`, the registry, `llm-backbones --help` and `llm-backbones list --json`,
against `import torch` in the same run.

Each command runs in a fresh Python process and is timed from outside (wall clock, interpreter start-up
included); the commands take turns, one round after another, after one unmeasured round that warms the
page cache, and each reports the median of `--repeats` rounds. `import torch` is the baseline: what every
command that touches a model pays anyway. `import llm_backbones` and `--help` should load neither torch nor
transformers (lazy package face), nor should `list`: the registry holds class and dtype names, imported on
first use.
Which modules each loads is checked by tests/unit/test_import_weight.py. Prints JSON.

    python benchmarks/bench_import.py [--repeats 5] [--out benchmarks/results/DATE-import-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path

from _common import cpu_description

BASELINE = "import_torch"
COMMANDS: dict[str, list[str]] = {
    "python_startup": ["-c", "pass"],
    BASELINE: ["-c", "import torch"],
    "import_llm_backbones": ["-c", "import llm_backbones"],
    "registry": ["-c", "import llm_backbones; llm_backbones.get_spec"],
    "cli_help": ["-m", "llm_backbones", "--help"],
    "cli_list_json": ["-m", "llm_backbones", "list", "--json"],
}
# ratio to `import torch` measured in the same run, at most
TARGETS = {"import_llm_backbones": 0.1, "cli_help": 0.5, "cli_list_json": 0.5}


# With --before-src: the same commands on an earlier source tree (its CLI module was llm_backbones.cli).
BEFORE: dict[str, list[str]] = {
    "before_import_llm_backbones": ["-c", "import llm_backbones"],
    "before_cli_help": ["-m", "llm_backbones.cli", "--help"],
    "before_cli_list_json": ["-m", "llm_backbones.cli", "list", "--json"],
}


def _run(args: list[str], src: Path | None = None) -> float:
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="measured rounds; each command's median is reported"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument(
        "--before-src",
        type=Path,
        help="the src/ folder of an earlier checkout (git worktree add /tmp/before <commit>): its commands "
        "are timed in the same rounds",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    commands = {name: (command, None) for name, command in COMMANDS.items()}
    if args.before_src is not None:
        commands |= {name: (command, args.before_src.resolve()) for name, command in BEFORE.items()}
    for command, src in commands.values():  # warm-up round: page cache, .pyc files
        _run(command, src)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, (command, src) in commands.items():
            times[name].append(_run(command, src))

    baseline = statistics.median(times[BASELINE])
    results = {}
    for name, (command, src) in commands.items():
        median = statistics.median(times[name])
        results[name] = {
            "command": " ".join(["python", *(repr(a) if " " in a else a for a in command)])
            + (f"  (PYTHONPATH={src})" if src else ""),
            "median_s": round(median, 3),
            "min_s": round(min(times[name]), 3),
            "ratio_to_import_torch": round(median / baseline, 3),
        }
    result = {
        "benchmark": "import cost: package face, registry, CLI --help and list, against `import torch`",
        "date": date.today().isoformat(),
        "device": cpu_description(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "llm_backbones": version("llm-backbones"),
        "method": f"fresh process per run, wall clock from outside, median of {args.repeats} rounds "
        "(commands interleaved) after one warm-up round",
        "baseline": BASELINE,
        "results": results,
        "targets_ratio_to_import_torch_max": TARGETS,
        "targets_met": {
            name: results[name]["ratio_to_import_torch"] <= limit for name, limit in TARGETS.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
