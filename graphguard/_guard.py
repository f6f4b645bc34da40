"""``@graphguard.guard``: check a function's body for hazards every time it runs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._capture import validate_label, validate_on_hazard
from ._diagnostic import safe_value
from ._errors import ConfigError, HazardError
from ._frames import trim_traceback
from ._session import guarded, new_state

__all__ = ["guard"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def guard(fn: F, /) -> F: ...
@overload
def guard(
    fn: None = None, /, *, on_hazard: str = "raise", label: str | None = None
) -> Callable[[F], F]: ...
def guard(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    on_hazard: str = "raise",
    label: str | None = None,
) -> Any:
    """Guard ``fn``'s body every time it runs.

    Inside a ``graphguard.capture()`` the body is checked as part of that capture; inside a plain
    ``torch.cuda.graph`` capture it is checked in capture phase (every policy raises there, since
    only the capture's owner can end it); anywhere else it runs eagerly in audit mode.
    Usable bare (``@guard``) or with options (``@guard(on_hazard="warn", label="step")``).
    """
    validate_on_hazard(on_hazard)
    validate_label(label)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise ConfigError(f"guard() decorates a callable, got {safe_value(func)}")
        kind = _deferred_body(func)
        if kind is not None:
            raise ConfigError(
                f"guard() cannot check {getattr(func, '__qualname__', func)!r}: it is {kind}, "
                "so calling it only creates an object and its body runs later, outside the guard; "
                "guard the plain function that does the step's work (or use "
                "graphguard.capture() inside the body)"
            )
        name = label if label is not None else getattr(func, "__qualname__", repr(func))

        @functools.wraps(func)
        def guarded_call(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            state = new_state(on_hazard=on_hazard, label=name)
            try:
                with guarded(state):
                    return func(*args, **kwargs)
            except HazardError as exc:
                trim_traceback(exc)
                raise

        guarded_call.__graphguard_guarded__ = True  # type: ignore[attr-defined]
        return guarded_call

    if fn is None:
        return decorate
    return decorate(fn)


def _deferred_body(func: Callable[..., Any]) -> str | None:
    """What kind of function ``func`` is when its body does not run at call time, else None."""
    # A callable object: what runs is its class's __call__.
    target = func if inspect.isroutine(func) else vars(type(func)).get("__call__", func)
    for candidate in (func, target):
        if inspect.isasyncgenfunction(candidate):
            return "an async generator function"
        if inspect.iscoroutinefunction(candidate):
            return "an async function (async def)"
        if inspect.isgeneratorfunction(candidate):
            return "a generator function"
    return None
