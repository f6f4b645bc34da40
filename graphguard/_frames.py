"""Which frames are the user's: the one frame finder used by diagnostics, tracebacks, ``check``
and the pytest plugin.

A frame is *internal* when its code lives in graphguard itself, in torch, in wrapt, or in the
standard-library plumbing between them (``contextlib``, ``functools``, ``runpy``). Everything
else is the user's code, third-party libraries included: a hazard inside ``transformers`` is
reported at the ``transformers`` line, because that is where the illegal call is.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable
from types import FrameType, TracebackType

__all__ = [
    "PACKAGE_DIR",
    "find_calling_frame",
    "find_user_frame",
    "is_internal",
    "trim_traceback",
    "user_tracebacks",
]

#: graphguard's own directory, with a trailing separator.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _module_dir(name: str) -> str | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if path else None


def _internal_dirs() -> tuple[str, ...]:
    import torch  # noqa: F401 - make sure its directory is known
    import wrapt  # noqa: F401

    return tuple(d for d in (PACKAGE_DIR, _module_dir("torch"), _module_dir("wrapt")) if d)


_INTERNAL_DIRS = _internal_dirs()
_INTERNAL_FILES = frozenset(
    os.path.abspath(path)
    for name in ("contextlib", "functools", "runpy")
    if (path := getattr(sys.modules.get(name), "__file__", None))
)
_cache: dict[str, bool] = {}


def is_internal(filename: str) -> bool:
    """Whether code from ``filename`` is graphguard's, torch's or the plumbing between them."""
    known = _cache.get(filename)
    if known is not None:
        return known
    if filename.startswith("<"):  # <frozen runpy>, <string> from torch internals
        internal = filename.startswith("<frozen")
    else:
        path = os.path.abspath(filename)
        internal = path in _INTERNAL_FILES or path.startswith(_INTERNAL_DIRS)
    if len(_cache) < 4096:
        _cache[filename] = internal
    return internal


def find_user_frame(start: FrameType | None = None) -> FrameType | None:
    """The innermost frame outside graphguard, torch and wrapt (``None`` if there is none)."""
    frame: FrameType | None = start if start is not None else sys._getframe(1)
    while frame is not None:
        if not is_internal(frame.f_code.co_filename):
            return frame
        frame = frame.f_back
    return None


def _dispatch_files() -> frozenset[str]:
    import torch

    root = os.path.dirname(os.path.abspath(torch.__file__))
    return frozenset(
        os.path.join(root, name)
        for name in ("overrides.py", "_tensor.py", os.path.join("utils", "_device.py"))
    )


_DISPATCH_FILES = _dispatch_files()


def find_calling_frame(start: FrameType | None = None) -> FrameType | None:
    """The frame that made the current torch call: torch's own code counts as a caller.

    Only graphguard's frames and torch's dispatch plumbing (``overrides.py``) are skipped, so
    ``torch.tensor(0.0, device="cpu")`` inside ``torch/optim/adam.py`` is judged by what
    ``adam.py`` wrote.
    """
    frame: FrameType | None = start if start is not None else sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        skipped = _plumbing.get(filename)
        if skipped is None:
            skipped = filename.startswith(PACKAGE_DIR) or (
                os.path.abspath(filename) in _DISPATCH_FILES
            )
            if len(_plumbing) < 4096:
                _plumbing[filename] = skipped
        if not skipped:
            return frame
        frame = frame.f_back
    return None


#: filename -> whether ``find_calling_frame`` skips its frames (graphguard, torch dispatch).
_plumbing: dict[str, bool] = {}


def user_tracebacks(tb: TracebackType | None) -> Iterable[TracebackType]:
    """The entries of ``tb`` (outermost first) whose code is not internal."""
    while tb is not None:
        if not is_internal(tb.tb_frame.f_code.co_filename) and not tb.tb_frame.f_locals.get(
            "__tracebackhide__"
        ):
            yield tb
        tb = tb.tb_next


def trim_traceback(exc: BaseException) -> None:
    """Leave only the user's frames in ``exc``'s traceback, so it ends at the user's line.

    The interceptor frames between the user's call and the raise are removed; the diagnostic
    (``str(exc)``) then follows the user's own last frame.
    """
    kept = list(user_tracebacks(exc.__traceback__))
    new_tb = None
    for entry in reversed(kept):
        new_tb = types.TracebackType(new_tb, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    if new_tb is not None:
        exc.__traceback__ = new_tb
