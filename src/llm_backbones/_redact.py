"""Keep a secret (the hub token) out of log lines and exception messages while a backbone loads.

The library itself never logs, stores or formats the token; this is the second line of defence, for what
the libraries it calls (transformers, huggingface_hub, their HTTP clients) might log or raise. While the
context is active, every log record created in the process has the secret replaced by `REDACTED`, and an
exception leaving the context has it replaced in its arguments (and in those of its causes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

REDACTED = "<redacted hf_token>"


def _scrub_value(value: object, secret: str) -> object:
    if isinstance(value, str) and secret in value:
        return value.replace(secret, REDACTED)
    return value


def scrub_exception(exc: BaseException, secret: str) -> None:
    """Replace `secret` in the arguments of `exc` and of every exception it was raised from or during."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        try:
            current.args = tuple(_scrub_value(a, secret) for a in current.args)
        except (AttributeError, TypeError):  # exotic exceptions with read-only args
            pass
        for name in ("filename", "filename2", "strerror", "msg"):
            if isinstance(getattr(current, name, None), str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(current, name, _scrub_value(getattr(current, name), secret))
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [_scrub_value(n, secret) for n in notes]
        stack.extend([current.__cause__, current.__context__])


@contextlib.contextmanager
def redacting(secret: str | None) -> Iterator[None]:
    """Within the block, `secret` never reaches a log record's message nor an escaping exception's text."""
    if not secret:
        yield
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return record
        if secret in message:
            record.msg, record.args = message.replace(secret, REDACTED), None
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    except BaseException as exc:
        scrub_exception(exc, secret)
        raise
    finally:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)
