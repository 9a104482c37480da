"""Keep a secret (the hub token) out of log lines, exception messages and tracebacks while a backbone loads.

The library itself never logs, stores or formats the token. It carries it as a `HubToken`, whose repr is
redacted, so a traceback printed with its frames' local variables (rich's `show_locals`, crash reporters,
`traceback.TracebackException(..., capture_locals=True)`) does not show it; the string handed to the hub is
a `str` whose repr is redacted too. `redacting` is the second line of defence, for what the libraries it
calls (transformers, huggingface_hub, their HTTP clients) might log or raise: while any `redacting` block
is active, every log record created in the process has the active secrets replaced by `REDACTED`, and an
exception leaving the block has them replaced in its arguments (and in those of its causes).

Thread-safe: one record factory is installed while at least one block is active (in any thread) and the
previous factory is restored when the last one ends, so concurrent loads never leave a factory behind.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

REDACTED = "<redacted hf_token>"


class _HiddenStr(str):
    """The token as the hub needs it (a `str`: headers, `==`, formatting give its value), with a redacted
    repr, so that the keyword arguments of a hub call show no token in a traceback's locals."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(REDACTED)


class HubToken:
    """A hub token that shows as `REDACTED` in repr, str and tracebacks; `for_hub()` gives it to the hub.

    Pass it wherever an `hf_token` is accepted. The loaders wrap a plain string on entry (`HubToken.wrap`), so
    their frames never hold the token itself.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"HubToken wraps a str, got {type(value).__name__}.")
        self._value = value

    @classmethod
    def wrap(cls, token: str | bool | HubToken | None) -> HubToken | bool | None:
        """`token` as a `HubToken`; an empty string as `None`; anything else (`None`, huggingface_hub's
        `True`/`False` "use the login's token" flags, an existing `HubToken`) as it is."""
        if not isinstance(token, str):
            return token
        return cls(token) if token else None

    def for_hub(self) -> str:
        """The token for a hub call's `token=` (a `str` whose repr is redacted)."""
        return _HiddenStr(self._value)

    def __repr__(self) -> str:
        return f"HubToken({REDACTED!r})"

    __str__ = __repr__

    def __reduce__(self) -> object:  # never written into a pickle (a checkpoint, a cached object)
        raise TypeError("A HubToken cannot be pickled or copied; pass the token again where it is needed.")


def _secret_of(token: str | bool | HubToken | None) -> str | None:
    token = HubToken.wrap(token)
    return token._value if isinstance(token, HubToken) else None


def rewrite_exception(exc: BaseException, fix: Callable[[str], str]) -> None:
    """Apply `fix` to every string argument and path/message attribute of `exc` and of every exception it
    was raised from or during (its notes too): one walk of the chain for every rewrite (secrets, temporary
    paths)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        with contextlib.suppress(AttributeError, TypeError):  # exotic exceptions with read-only args
            current.args = tuple(fix(a) if isinstance(a, str) else a for a in current.args)
        for name in ("path", "file", "filename", "filename2", "strerror", "msg"):
            if isinstance(getattr(current, name, None), str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(current, name, fix(getattr(current, name)))
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [fix(n) if isinstance(n, str) else n for n in notes]
        stack.extend([current.__cause__, current.__context__])


def scrub_exception(exc: BaseException, secret: str | HubToken) -> None:
    """Replace `secret` in the arguments of `exc` and of every exception it was raised from or during."""
    value = _secret_of(secret)
    if value:
        rewrite_exception(exc, lambda text: text.replace(value, REDACTED))


# The secrets of every active `redacting` block (with how many blocks hold each), and the one record factory
# installed while there are any.
_lock = threading.Lock()
_active: collections.Counter[str] = collections.Counter()
_previous_factory: Callable[..., logging.LogRecord] | None = None
_in_chain = False  # whether records pass through `_redacting_factory`


def _redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
    previous = _previous_factory or logging.LogRecord
    record = previous(*args, **kwargs)
    secrets = tuple(_active)
    if not secrets:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error handling
        return record
    redacted = message
    for secret in secrets:
        redacted = redacted.replace(secret, REDACTED)
    if redacted != message:
        record.msg, record.args = redacted, None
    return record


def _enter(secret: str) -> None:
    global _previous_factory, _in_chain
    with _lock:
        if not _in_chain:
            _previous_factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_redacting_factory)
            _in_chain = True
        _active[secret] += 1


def _exit(secret: str) -> None:
    global _in_chain
    with _lock:
        _active[secret] -= 1
        if _active[secret] <= 0:
            del _active[secret]
        if not _active and logging.getLogRecordFactory() is _redacting_factory:
            logging.setLogRecordFactory(_previous_factory or logging.LogRecord)
            _in_chain = False
        # else: another factory was installed on top of ours (and calls it); ours stays in its chain and
        # passes records through until a block is active again.


@contextlib.contextmanager
def redacting(secret: str | bool | HubToken | None) -> Iterator[None]:
    """Within the block, `secret` never reaches a log record's message nor an escaping exception's text."""
    secret = HubToken.wrap(secret)  # from here on this frame holds no plain token
    if not isinstance(secret, HubToken):
        yield
        return
    _enter(secret._value)
    try:
        yield
    except BaseException as exc:
        scrub_exception(exc, secret)
        raise
    finally:
        _exit(secret._value)
