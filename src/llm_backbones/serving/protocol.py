"""The wire format of the policy server, one place for both ends.

`POST /act` takes two forms:

- **JSON (OpenVLA's `vla-scripts/deploy.py`, unchanged):** a JSON object `{"image": <json-numpy array, uint8
  H x W x 3>, "instruction": str, "unnorm_key": str (optional)}`, as `json_numpy.patch()` then
  `requests.post(url, json={...})` sends it; or the same object double-encoded as a string under the one key
  `"encoded"`. The answer is the action as json-numpy (`{"__numpy__": <base64>, "dtype": "<f8", "shape":
  [7]}`); for the double-encoded form, that text again as a JSON string, as deploy.py answers.
- **Binary:** `Content-Type: application/x-npy`, the body the image as `.npy` bytes (`np.save`; no pickles),
  `instruction` and `unnorm_key` as URL query parameters. The answer is the action as `.npy` bytes.

Errors are JSON `{"error": <type>, "message": <what was wrong and the fix>, "status": <code>}` with a 4xx
status for the request's fault (400 unreadable, 413 too large, 415 content type, 422 an image, instruction
or unnorm_key the policy refuses) and 500 when the model raised on the request's batch (503 while shutting
down). deploy.py answers every error with the string "error" and status 200; this server does not.
"""

from __future__ import annotations

import importlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_backbones.errors import (
    ImageError,
    InputShapeError,
    LLMBackbonesError,
    MissingDependencyError,
    NormStatsError,
    RequestFormatError,
    ServingError,
)

JSON = "application/json"
NPY = "application/x-npy"
FIELDS = ("image", "instruction", "unnorm_key")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# statuses of the errors a request can cause; the client maps their names back to the classes
REQUEST_ERRORS: dict[str, type[LLMBackbonesError]] = {
    "RequestFormatError": RequestFormatError,
    "ImageError": ImageError,
    "InputShapeError": InputShapeError,
    "NormStatsError": NormStatsError,
}
SERVE_PACKAGES = ("fastapi", "uvicorn", "json_numpy")


def require_serve_packages(*modules: str) -> None:
    """`MissingDependencyError` (one line: how to install them) unless the server's packages import."""
    missing = []
    for module in modules or SERVE_PACKAGES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise MissingDependencyError(
            f"Serving needs {', '.join(missing)}: pip install 'llm-backbones[serve]'", name=missing[0]
        )


def _json_numpy() -> Any:
    require_serve_packages("json_numpy")
    import json_numpy

    return json_numpy


@dataclass(frozen=True)
class ActRequest:
    """One decoded request: the image as sent, the instruction and unnorm_key unchecked (the policy checks
    them), and the form to answer in ("json", "encoded" or "npy")."""

    image: Any
    instruction: Any
    unnorm_key: Any
    form: str


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_request(body: bytes, content_type: str | None, query: dict[str, str]) -> ActRequest:
    """The `/act` request in `body`; `RequestFormatError` (400, or 415 for another content type) when it
    cannot be read."""
    kind = media_type(content_type)
    if kind in ("", JSON):
        return decode_json(body)
    if kind == NPY:
        return decode_binary(body, query)
    raise RequestFormatError(
        f"Content-Type {kind!r} is not accepted: send {JSON} (deploy.py's json-numpy body) or {NPY} (the "
        "image as .npy bytes, instruction and unnorm_key as query parameters).",
        status=415,
    )


def _loads(text: bytes | str, what: str) -> Any:
    json_numpy = _json_numpy()
    try:
        return json_numpy.loads(text)
    except RecursionError:
        raise RequestFormatError(f"The {what} is JSON nested too deeply to read.") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON syntax, bad base64/dtype/shape
        raise RequestFormatError(
            f"The {what} is not valid JSON with json-numpy arrays ({type(exc).__name__}: {exc!s:.200}). "
            "Send what json_numpy.patch(); requests.post(url, json={'image': ..., 'instruction': ...}) sends."
        ) from None


def decode_json(body: bytes) -> ActRequest:
    """deploy.py's request: `{"image", "instruction", "unnorm_key"?}` or `{"encoded": "<that, as JSON>"}`."""
    payload = _loads(body, "body")
    form = "json"
    if isinstance(payload, dict) and "encoded" in payload:
        if len(payload) != 1:
            raise RequestFormatError(
                f"A double-encoded request holds only the key 'encoded', got keys {sorted(payload)}. Put "
                "image, instruction and unnorm_key inside the encoded string."
            )
        if not isinstance(payload["encoded"], str):
            raise RequestFormatError(
                f"'encoded' must be a string of JSON (json_numpy.dumps of the request), got "
                f"{type(payload['encoded']).__name__}."
            )
        payload, form = _loads(payload["encoded"], "'encoded' string"), "encoded"
    if not isinstance(payload, dict):
        raise RequestFormatError(
            f"The request must be a JSON object with keys {', '.join(FIELDS)}, got {type(payload).__name__}."
        )
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise RequestFormatError(
            f"Unknown request keys {unknown}; accepted: {', '.join(FIELDS)} (unnorm_key optional)."
        )
    missing = [name for name in FIELDS[:2] if name not in payload]
    if missing:
        raise RequestFormatError(
            f"The request lacks {' and '.join(missing)}; it needs image (a json-numpy array, uint8 "
            "H x W x 3) and instruction (a string), unnorm_key optional."
        )
    image = payload["image"]
    if not isinstance(image, np.ndarray):
        raise RequestFormatError(
            f"image must be a json-numpy array ({{'__numpy__': ..., 'dtype': ..., 'shape': ...}}), got "
            f"{type(image).__name__}. Call json_numpy.patch() before requests.post(url, json=...)."
        )
    return ActRequest(image, payload["instruction"], payload.get("unnorm_key"), form)


def decode_npy(data: bytes, what: str = "body") -> np.ndarray:
    """An array from `.npy` bytes (pickled object arrays refused); `RequestFormatError` otherwise."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, EOFError, OSError, ... for bytes that are not .npy
        raise RequestFormatError(
            f"The {what} is not a .npy array ({type(exc).__name__}: {exc!s:.200}). Send np.save's bytes of "
            "the image (uint8 H x W x 3)."
        ) from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise RequestFormatError(f"The {what} is an .npz archive; send one array as .npy bytes (np.save).")
    return array


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_binary(body: bytes, query: dict[str, str]) -> ActRequest:
    unknown = sorted(set(query) - set(FIELDS[1:]))
    if unknown:
        raise RequestFormatError(
            f"Unknown query parameters {unknown}; accepted: instruction, unnorm_key (the image is the body)."
        )
    if "instruction" not in query:
        raise RequestFormatError(
            "The binary form needs the instruction as a query parameter: POST /act?instruction=...&"
            "unnorm_key=... with the image's .npy bytes as the body."
        )
    return ActRequest(decode_npy(body), query["instruction"], query.get("unnorm_key"), "npy")


def encode_action(action: np.ndarray, form: str) -> tuple[bytes, str]:
    """The answer body and its content type: json-numpy as deploy.py answers, or `.npy` bytes."""
    if form == "npy":
        return encode_npy(action), NPY
    text = _json_numpy().dumps(action)
    if form == "encoded":  # deploy.py: JSONResponse(json_numpy.dumps(action)), a JSON string
        text = json.dumps(text)
    return text.encode(), JSON


def status_of(exc: LLMBackbonesError) -> int:
    """The HTTP status an error is answered with."""
    if isinstance(exc, (RequestFormatError, ServingError)) and exc.status is not None:
        return exc.status
    if isinstance(exc, (ImageError, InputShapeError, NormStatsError)):
        return 422
    return 500


def error_body(exc: BaseException, status: int) -> bytes:
    return json.dumps({"error": type(exc).__name__, "message": str(exc), "status": status}).encode()


__all__ = [
    "ActRequest",
    "DEFAULT_MAX_BODY_BYTES",
    "JSON",
    "NPY",
    "REQUEST_ERRORS",
    "decode_json",
    "decode_npy",
    "decode_request",
    "encode_action",
    "encode_npy",
    "error_body",
    "require_serve_packages",
    "status_of",
]
