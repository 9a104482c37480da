"""The one argument check of the public entry points: flags, counts, dtypes, choices and keywords.

Every entry point checks what it is given here, at the library's boundary, instead of passing it on to torch
or transformers to fail deep inside (or, for a flag like `strict="no"`, to be read as true). Each function
returns the value as the caller should use it, or raises `error` (default `ArgumentError`) whose message
names the argument, the value, what is accepted and the fix; unknown names get close matches.

A foundation module: it imports only the standard library and `llm_backbones.errors` (torch on first use of
`check_dtype`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llm_backbones.errors import ArgumentError, LLMBackbonesError, closest

# The dtypes weights and activations may have (torch's floating dtypes a model runs in).
FLOAT_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


def _raise(error: type[LLMBackbonesError], name: str, value: Any, why: str, accepted: str, fix: str) -> None:
    message = f"{name}={value!r:.80} is not accepted: {why}. Accepted: {accepted}."
    if fix:
        message += f" {fix}"
    if issubclass(error, ArgumentError):
        raise error(message, name=name, value=value)
    raise error(message)


def int_problem(value: Any, *, low: int | None = 1, high: int | None = None) -> str | None:
    """Why `value` is not an integer (a bool is not one) from `low` to `high` (None: unbounded), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"an integer is needed, got {type(value).__name__} {value!r:.40}"
    if low is not None and value < low:
        return f"it must be at least {low}"
    if high is not None and value > high:
        return f"it must be at most {high:,}"
    return None


def check_int(
    value: Any,
    name: str,
    *,
    low: int | None = 1,
    high: int | None = None,
    error: type[LLMBackbonesError] = ArgumentError,
    fix: str = "",
) -> int:
    """`value` if it is an int (not a bool) from `low` to `high`, else `error`."""
    why = int_problem(value, low=low, high=high)
    if why:
        bounds = f"an integer from {low if low is not None else '-inf'} to {f'{high:,}' if high else 'any'}"
        _raise(error, name, value, why, bounds, fix)
    return int(value)


def check_positive_int(value: Any, name: str, **kwargs: Any) -> int:
    """`check_int` from 1."""
    return check_int(value, name, low=1, **kwargs)


def check_bool(
    value: Any, name: str, *, error: type[LLMBackbonesError] = ArgumentError, fix: str = ""
) -> bool:
    """`value` if it is a bool, else `error`: a flag given as "no", 0 or None is not read as true or false."""
    if not isinstance(value, bool):
        _raise(
            error,
            name,
            value,
            f"a bool is needed, got {type(value).__name__}",
            "True or False",
            fix or f"Pass {name}=True or {name}=False.",
        )
    return value


def check_choice(
    value: Any,
    name: str,
    choices: Iterable[str],
    *,
    error: type[LLMBackbonesError] = ArgumentError,
    fix: str = "",
) -> str:
    """`value` if it is one of `choices`, else `error` naming the closest ones."""
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    close = closest(value, choices) if isinstance(value, str) else []
    why = (
        "it is not a known one" if isinstance(value, str) else f"a str is needed, got {type(value).__name__}"
    )
    hint = f"Did you mean {close[0]!r}? " if close else ""
    _raise(error, name, value, why, ", ".join(repr(c) for c in choices), f"{hint}{fix}".strip())
    raise AssertionError("unreachable")  # pragma: no cover


def check_dtype(
    value: Any,
    name: str = "dtype",
    *,
    accepted: Iterable[str] = FLOAT_DTYPES,
    error: type[LLMBackbonesError] = ArgumentError,
    fix: str = "",
) -> Any:
    """`value` as a `torch.dtype`: a torch dtype or its name ("bfloat16", "torch.bfloat16") among `accepted`,
    else `error`."""
    import torch

    accepted = tuple(accepted)
    dtype = value
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
    if isinstance(dtype, torch.dtype) and str(dtype).removeprefix("torch.") in accepted:
        return dtype
    if isinstance(dtype, torch.dtype):
        why = f"{dtype} is not a floating dtype a model runs in"
    elif isinstance(value, str):
        why = f"torch has no dtype {value!r}"
    else:
        why = f"a torch.dtype or its name is needed, got {type(value).__name__}"
    _raise(
        error,
        name,
        value,
        why,
        ", ".join(f"torch.{d}" for d in accepted) + " (or their names)",
        fix or f"Pass e.g. {name}=torch.bfloat16.",
    )


def check_keywords(
    given: Mapping[str, Any] | Iterable[str],
    accepted: Iterable[str],
    where: str,
    *,
    error: type[LLMBackbonesError] = ArgumentError,
) -> None:
    """`error` for the first keyword of `given` that `where` does not take, with the closest it does."""
    accepted = sorted(accepted)
    for key in given:
        if key not in accepted:
            close = closest(key, accepted)
            hint = f" Did you mean {close[0]}=?" if close else ""
            message = (
                f"{where} takes no keyword {key!r}.{hint} Accepted keywords: {', '.join(accepted)}. Fix the "
                "name (or drop it)."
            )
            if issubclass(error, ArgumentError):
                raise error(message, name=str(key), value=key)
            raise error(message)
