"""The policy server: `create_app(policy)` (FastAPI) and `serve(policy, host, port)` (uvicorn).

`POST /act` (deploy.py's JSON form or `.npy` bytes; see `protocol`), `GET /health`. Requests are read and
checked on the event loop's side (`VLAPolicy.check_inputs`, in a helper thread for large bodies), so a bad
request is answered with its own 4xx and never reaches a batch; good ones wait in the `BatchingQueue`, whose
one worker thread runs the model. On SIGTERM uvicorn stops accepting connections and waits for the requests
in flight; the queue then answers whatever is left and stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llm_backbones.data.norm_stats import check_unnorm_key
from llm_backbones.errors import LLMBackbonesError, RequestFormatError, ServeConfigError
from llm_backbones.serving import protocol
from llm_backbones.serving.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, BatchingQueue

logger = logging.getLogger(__name__)

# a body over the limit is read on (and dropped) up to this many times the limit, so the client, which
# sends its whole body before reading, gets the 413 instead of a reset connection; past it the server hangs up
_DRAIN_FACTOR = 4


def policy_facts(policy: Any) -> dict[str, Any]:
    """What `/health` says about the policy: its vision and LLM ids, datasets, device, dtype."""
    backbone = getattr(policy, "backbone", None)
    return {
        "vision_backbone_id": policy.vision_backbone_id,
        "llm_backbone_id": getattr(backbone, "identifier", None),
        "unnorm_keys": sorted(policy.norm_stats),
        "device": str(policy.device),
        "dtype": str(policy.dtype).removeprefix("torch."),
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; `RequestFormatError` (413) when it is over `limit` bytes."""
    declared = request.headers.get("content-length")
    too_large = RequestFormatError(
        f"The body is over the server's limit of {limit:,} bytes ({limit / 2**20:g} MiB); send a smaller "
        "image (a robot camera frame is well under 1 MiB) or start the server with a larger --max-body-mb.",
        status=413,
    )
    if declared is not None and declared.isdigit() and int(declared) > _DRAIN_FACTOR * limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


def create_app(
    policy: Any,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_S * 1000,
    max_body_bytes: int = protocol.DEFAULT_MAX_BODY_BYTES,
    unnorm_key: str | None = None,
) -> FastAPI:
    """A FastAPI app serving `policy` (a `VLAPolicy`, or anything with its `check_inputs`,
    `predict_actions`, `norm_stats`, `vision_backbone_id`, `device` and `dtype`).

    Args:
        max_batch: the most requests one `predict_actions` call runs.
        max_wait_ms: how long a request waits for companions before its batch runs.
        max_body_bytes: larger bodies are answered 413.
        unnorm_key: the dataset key for requests that send none (None: the request must name one unless the
            policy knows a single dataset).
    """
    protocol.require_serve_packages()
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ServeConfigError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}.")
    if unnorm_key is not None:  # a wrong default fails here, not on every request
        check_unnorm_key(policy.norm_stats, unnorm_key)
    queue = BatchingQueue(
        lambda images, texts, key: policy.predict_actions(images, texts, unnorm_key=key),
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000,
    )
    facts = policy_facts(policy)
    errors = {"4xx": 0, "5xx": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue.start()
        yield
        await queue.close()

    app = FastAPI(
        title="llm-backbones policy server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.queue = queue

    def decode_and_check(body: bytes, content_type: str | None, query: dict[str, str]):
        request = protocol.decode_request(body, content_type, query)
        key = request.unnorm_key if request.unnorm_key is not None else unnorm_key
        image, key = policy.check_inputs(request.image, request.instruction, key)
        return request, image, key

    def failure(exc: BaseException, status: int) -> Response:
        errors["5xx" if status >= 500 else "4xx"] += 1
        return Response(protocol.error_body(exc, status), status_code=status, media_type=protocol.JSON)

    @app.post("/act")
    async def act(request: Request) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
            args = (body, request.headers.get("content-type"), dict(request.query_params))
            # small bodies here; a large one is decoded off the event loop (json + base64 of megabytes)
            if len(body) < 256 * 1024:
                decoded, image, key = decode_and_check(*args)
            else:
                decoded, image, key = await asyncio.to_thread(decode_and_check, *args)
            action = await queue.submit(image, decoded.instruction, key)
            content, media_type = protocol.encode_action(action, decoded.form)
            return Response(content, media_type=media_type)
        except LLMBackbonesError as exc:
            return failure(exc, protocol.status_of(exc))
        except Exception as exc:  # a bug of ours: the request fails, the server stays up
            logger.exception("Unexpected error while answering /act")
            return failure(exc, 500)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(
            {
                "status": "draining" if queue.closing else "ok",
                "policy": facts,
                "device": facts["device"],
                "dtype": facts["dtype"],
                "max_batch": queue.max_batch,
                "max_wait_ms": queue.max_wait_s * 1000,
                "queue_depth": queue.depth,
                "in_flight": queue.in_flight,
                **queue.stats.summary(),
                "errors": dict(errors),
                # decoded tokens the action mask changed (the model's argmax was not an action token)
                "stray_tokens": getattr(policy, "stray_tokens", 0),
            }
        )

    return app


def serve(
    policy: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    **app_options: Any,
) -> None:
    """Serve `policy` with uvicorn until SIGINT/SIGTERM (then finish the requests in flight). Binds to
    127.0.0.1 unless `host` says otherwise; `app_options` are `create_app`'s."""
    import uvicorn

    app = create_app(policy, **app_options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)


__all__ = ["create_app", "policy_facts", "read_body", "serve"]
