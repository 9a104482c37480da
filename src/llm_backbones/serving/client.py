"""`PolicyClient(url).act(image, instruction)`: the Python client of `llm-backbones serve`.

It sends the binary form (the image as `.npy` bytes, no base64) and needs numpy and the standard library only
(no server packages). A request the server refuses raises the same typed error a local `VLAPolicy` raises
(`ImageError`, `InputShapeError`, `NormStatsError`; `RequestFormatError` for an unreadable request), with the
server's message; a failure on the server's side raises `ServingError` with the HTTP status.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

from llm_backbones.errors import ImageError, RequestFormatError, ServingError
from llm_backbones.serving.protocol import NPY, REQUEST_ERRORS, decode_npy, encode_npy


class PolicyClient:
    """A client of one policy server, e.g. `PolicyClient("http://127.0.0.1:8000")`.

    `act(image, instruction, unnorm_key=None)` -> the action (`np.ndarray [action_dim]`, float64, equal to the
    server policy's `predict_action`); `health()` -> the server's `/health` facts. `timeout` is in seconds.
    """

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ServingError(
                f"The server URL must be http://HOST:PORT (as `llm-backbones serve` prints it), got {url!r}."
            )
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"PolicyClient({self.url!r})"

    def act(self, image: Any, instruction: str, unnorm_key: str | None = None) -> np.ndarray:
        """The action the server's policy predicts for `image` (uint8 H x W x 3, or a PIL image) and
        `instruction`, un-normalized with `unnorm_key` (default: the server's)."""
        if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # PIL
            image = image.convert("RGB")
        array = np.asarray(image)
        if array.dtype == object:
            raise ImageError(
                f"An image must be an H x W x 3 array (uint8) or a PIL image, got {type(image).__name__} "
                "holding Python objects."
            )
        query = {"instruction": instruction}
        if unnorm_key is not None:
            query["unnorm_key"] = unnorm_key
        body = self._call(
            f"/act?{urllib.parse.urlencode(query)}",
            data=encode_npy(array),
            headers={"Content-Type": NPY},
        )
        try:
            return decode_npy(body, "server's answer")
        except RequestFormatError as exc:
            raise ServingError(str(exc)) from None

    def health(self) -> dict[str, Any]:
        return json.loads(self._call("/health"))

    def _call(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as exc:
            raise _error_of(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServingError(
                f"No answer from the policy server at {self.url} ({reason}). Is `llm-backbones serve` "
                "running there?"
            ) from None


def _error_of(status: int, body: bytes) -> Exception:
    """The typed error of a server's error answer: the request error it names, else `ServingError`."""
    try:
        answer = json.loads(body)
        kind, message = answer["error"], answer["message"]
    except (ValueError, KeyError, TypeError):
        return ServingError(f"The server answered {status}: {body[:300]!r}", status=status)
    cls = REQUEST_ERRORS.get(kind) if 400 <= status < 500 else None
    if cls is None:
        return ServingError(f"The server answered {status} ({kind}): {message}", status=status)
    error = cls(message, status=status) if kind == "RequestFormatError" else cls(message)
    error.status = status
    return error


__all__ = ["PolicyClient"]
