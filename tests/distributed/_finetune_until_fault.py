"""Run `llm-backbones finetune ARGS...` (or `finetune-vla ARGS...`) and stop dead at a chosen point, for a
test to SIGKILL, as a node failure would. Usage: `_finetune_until_fault.py FAULT MARKER_DIR finetune ARGS...`
(or `... finetune-vla ARGS...`), alone or under torchrun.

FAULT `step:N`: rank 0 stops inside optimizer step N (after the backward pass, before the update);
`save:N`: rank 0 stops once every rank's shards of the step-N checkpoint are written, before the
checkpoint is published. Each rank writes its pid to `MARKER_DIR/pid-<rank>` at start; the stopped rank
writes `MARKER_DIR/stopped` and sleeps until killed. Both recipes look `training.loop.optimizer_step` up
when they run and publish through `training.checkpoint._publish`: one patch of each stops either.
"""

import os
import sys
import time
from pathlib import Path

fault, marker_dir, *args = sys.argv[1:]
kind, _, number = fault.partition(":")
target = int(number)
rank = os.environ.get("RANK", "0")
Path(marker_dir, f"pid-{rank}").write_text(str(os.getpid()))


def stop() -> None:
    Path(marker_dir, "stopped").write_text(rank)
    while True:
        time.sleep(60)


if kind == "step":
    import llm_backbones.training.distributed as distributed
    import llm_backbones.training.loop as loop

    optimizer_step = loop.optimizer_step

    def clip_and_stop(model, max_norm):  # optimizer_step clips once the loss of every micro-batch is back
        stop()

    def step_or_stop(*args, step, **kwargs):
        if step == target and rank == "0":
            distributed.clip_grad_norm = clip_and_stop
        return optimizer_step(*args, step=step, **kwargs)

    loop.optimizer_step = step_or_stop
elif kind == "save":
    import llm_backbones.training.checkpoint as train_checkpoint

    publish = train_checkpoint._publish

    def publish_or_stop(run, partial, final, meta):
        if meta["step"] == target:
            stop()
        return publish(run, partial, final, meta)

    train_checkpoint._publish = publish_or_stop
else:
    raise SystemExit(f"unknown fault {fault!r}; use step:N or save:N")

from llm_backbones.app.cli import app  # noqa: E402

app(args, prog_name="llm-backbones")
