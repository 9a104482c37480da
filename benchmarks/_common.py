"""What the benchmark scripts share: how a CPU is described in their JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """ "CPU (<model name>, <n> threads)", the model as /proc/cpuinfo names it where it can be read."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({model}, {os.cpu_count()} threads)"
