"""Dynamic batching: concurrent requests gathered into one `predict_actions` call on one worker thread.

Requests wait in one line per dataset key (a batch is un-normalized with one dataset's statistics). The
batcher takes the line whose oldest request came first and runs it as soon as it holds `max_batch` requests
or that request has waited `max_wait_s`: a request waits at most `max_wait_s` for companions, and requests
that arrived while the model was busy go in the next batch at once. The model runs in one worker thread
(one call at a time: torch modules and HF generation are not re-entrant), so the event loop never blocks on
it. An exception in a call fails that batch's requests only (`ServingError`, status 500).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_backbones.errors import LLMBackbonesError, ServeConfigError, ServingError

# The serving defaults, one place (create_app, serve and the CLI take them from here)
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_S = 0.005

logger = logging.getLogger(__name__)

# (images, instructions, unnorm_key) -> actions [B, action_dim]
PredictBatch = Callable[[Sequence[Any], Sequence[str], str], np.ndarray]


@dataclass
class _Pending:
    image: Any
    instruction: str
    key: str
    future: asyncio.Future
    arrived: float  # the event loop's clock
    started: float = field(default_factory=time.perf_counter)


@dataclass
class ServeStats:
    """Counters for `/health`: batches and requests served, batch sizes, latencies (submit to answer) of the
    last `window` requests."""

    window: int = 10_000
    batches: int = 0
    requests: int = 0
    failed_batches: int = 0
    largest_batch: int = 0
    latencies_s: deque = field(default_factory=deque)

    def record(self, size: int, latencies: list[float], failed: bool) -> None:
        self.batches += 1
        self.requests += size
        self.failed_batches += failed
        self.largest_batch = max(self.largest_batch, size)
        self.latencies_s.extend(latencies)
        while len(self.latencies_s) > self.window:
            self.latencies_s.popleft()

    def summary(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_s, dtype=np.float64) * 1000
        pct = (lambda q: round(float(np.percentile(latencies, q)), 3)) if latencies.size else (lambda q: None)
        return {
            "batches_served": self.batches,
            "requests_served": self.requests,
            "failed_batches": self.failed_batches,
            "mean_batch_size": round(self.requests / self.batches, 3) if self.batches else None,
            "largest_batch": self.largest_batch,
            "latency_ms": {"p50": pct(50), "p99": pct(99), "window": int(latencies.size)},
        }


class BatchingQueue:
    """`await queue.submit(image, instruction, key)` -> the action of that request, computed in a batch.

    `predict_batch(images, instructions, key)` runs in one worker thread and returns `[B, action_dim]`.
    Call `start()` inside the running event loop and `close()` to finish what is queued and stop.
    """

    def __init__(
        self,
        predict_batch: PredictBatch,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ServeConfigError(f"max_batch must be an int >= 1, got {max_batch!r}.")
        if not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s <= 60:
            raise ServeConfigError(f"max_wait must be between 0 and 60 s, got {max_wait_s!r} s.")
        self.predict_batch = predict_batch
        self.max_batch, self.max_wait_s = max_batch, float(max_wait_s)
        self.stats = ServeStats()
        self._lines: dict[str, deque[_Pending]] = {}
        self._queued = 0
        self._running = 0
        self._arrival = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-backbones-policy")

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the batch the model is running)."""
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._queued + self._running

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="llm-backbones-batcher")

    async def close(self) -> None:
        """Refuse new requests, answer every queued one, then stop the worker."""
        self._closing = True
        self._arrival.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, image: Any, instruction: str, key: str) -> np.ndarray:
        if self._closing:
            raise ServingError("The server is shutting down and takes no new requests.", status=503)
        if self._task is None:
            raise ServingError("The batching queue was not started (call start() in the event loop).")
        loop = asyncio.get_running_loop()
        item = _Pending(image, instruction, key, loop.create_future(), loop.time())
        self._lines.setdefault(key, deque()).append(item)
        self._queued += 1
        self._arrival.set()
        return await item.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queued:
                if self._closing:
                    return
                self._arrival.clear()
                await self._arrival.wait()
                continue
            key, line = min(self._lines.items(), key=lambda kv: kv[1][0].arrived)
            deadline = line[0].arrived + self.max_wait_s
            while len(line) < self.max_batch and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except TimeoutError:
                    break
            batch = [line.popleft() for _ in range(min(self.max_batch, len(line)))]
            if not line:
                del self._lines[key]
            self._queued -= len(batch)
            await self._run_batch(key, batch)

    async def _run_batch(self, key: str, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        self._running = len(batch)
        images, texts = [item.image for item in batch], [item.instruction for item in batch]
        failed = False
        try:
            actions = await loop.run_in_executor(self._executor, self.predict_batch, images, texts, key)
            actions = np.asarray(actions)
            if actions.ndim != 2 or actions.shape[0] != len(batch):
                raise ServingError(
                    f"predict_actions returned shape {actions.shape} for a batch of {len(batch)} requests."
                )
        except Exception as exc:  # the model's failure is this batch's, never the server's
            failed = True
            if len(batch) > 1:  # find whose request it was: each alone, so no client fails for another's
                logger.warning(
                    "The policy raised on a batch of %d (%s: %s); running its requests one by one",
                    len(batch),
                    type(exc).__name__,
                    exc,
                )
                for item in batch:
                    await self._run_batch(key, [item])
                return
            logger.exception("The policy raised on a request (unnorm_key %r)", key)
            refused = isinstance(exc, LLMBackbonesError) and isinstance(exc, ValueError)
            what = "refused" if refused else "raised on"
            error = ServingError(
                f"The policy {what} this request: {type(exc).__name__}: {exc}"
                + ("" if refused else " The server keeps serving; other requests are not affected."),
                status=422 if refused else 500,
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            for item, action in zip(batch, actions, strict=True):
                if not item.future.done():  # a client that went away
                    item.future.set_result(action.copy())
        finally:
            self._running = 0
        now = time.perf_counter()
        self.stats.record(len(batch), [now - item.started for item in batch], failed)


__all__ = ["BatchingQueue", "PredictBatch", "ServeStats"]
