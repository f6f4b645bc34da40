"""Diagnostics are data: a frozen record of one hazard, rendered to text by ``__str__``.

The record never holds tensor values, only their shape, dtype and device.
"""

from __future__ import annotations

import linecache
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

from ._rules import Rule

__all__ = ["Diagnostic", "TensorInfo", "find_user_frame", "make_diagnostic"]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _module_dir(name: str) -> str | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if path else None


# Frames from these packages are library internals, never "the user's line".
_INTERNAL_DIRS: tuple[str, ...] = tuple(
    d for d in (_PKG_DIR, _module_dir("torch"), _module_dir("wrapt")) if d is not None
)
_INTERNAL_FILES = {
    os.path.abspath(path)
    for m in (sys.modules.get("contextlib"), sys.modules.get("functools"))
    if (path := getattr(m, "__file__", None))
}


def _is_internal(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen ...>, <string> from torch internals
        return filename.startswith("<frozen")
    path = os.path.abspath(filename)
    if path in _INTERNAL_FILES:
        return True
    # The pytest plugin and the CLI are graphguard too, but a user's tests that live inside the
    # package's own test tree are not: only the package directory counts.
    return path.startswith(_INTERNAL_DIRS)


def find_user_frame(start: FrameType | None = None) -> FrameType | None:
    """The innermost frame outside graphguard, torch and wrapt (``None`` if there is none)."""
    frame: FrameType | None = start if start is not None else sys._getframe(1)
    while frame is not None:
        if not _is_internal(frame.f_code.co_filename):
            return frame
        frame = frame.f_back
    return None


@dataclass(frozen=True)
class TensorInfo:
    """What a diagnostic may say about a tensor: never its values."""

    shape: tuple[int, ...]
    dtype: str
    device: str

    @classmethod
    def of(cls, obj: Any) -> TensorInfo | None:
        import torch

        if not isinstance(obj, torch.Tensor):
            return None
        try:
            shape = tuple(int(s) for s in obj.shape)
        except Exception:  # symbolic or otherwise exotic shapes
            shape = ()
        return cls(shape=shape, dtype=str(obj.dtype).removeprefix("torch."), device=str(obj.device))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}] on {self.device}"


@dataclass(frozen=True)
class Diagnostic:
    """One hazard, as data. ``str(diagnostic)`` renders the full message."""

    code: str
    kind: str
    title: str
    api: str
    message: str
    hint: str
    why: str
    filename: str
    lineno: int
    function: str
    source_line: str
    docs: str
    phase: str = "audit"
    label: str | None = None
    thread: str = ""
    tensor: TensorInfo | None = None
    #: Extra, rule-specific facts (for example the captured and current value of a scalar).
    details: tuple[tuple[str, str], ...] = field(default=())

    @property
    def location(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tensor info flattened)."""
        data = asdict(self)
        tensor = data.pop("tensor")
        data["details"] = dict(self.details)
        if tensor is not None:
            data["tensor_shape"] = list(tensor["shape"])
            data["tensor_dtype"] = tensor["dtype"]
            data["tensor_device"] = tensor["device"]
        return data

    def __str__(self) -> str:
        gutter = " " * len(str(self.lineno))
        where = f"{self.location} in {self.function}"
        lines = [
            f"{self.code} [{self.kind}] {self.title}",
            f"{gutter}--> {where}",
        ]
        if self.source_line:
            lines += [f"{gutter} |", f"{self.lineno} |     {self.source_line}", f"{gutter} |"]
        lines.append(f"{gutter} = what: {self.message}")
        for key, value in self.details:
            lines.append(f"{gutter} = {key}: {value}")
        lines.append(f"{gutter} = why: {self.why}")
        lines.append(f"{gutter} = fix: {self.hint}")
        lines.append(f"{gutter} = docs: {self.docs} (or `graphguard rules {self.code}`)")
        return "\n".join(lines)


def make_diagnostic(
    rule: Rule,
    api: str,
    message: str,
    *,
    phase: str,
    label: str | None,
    tensor: Any = None,
    frame: FrameType | None = None,
    details: tuple[tuple[str, str], ...] = (),
    location: tuple[str, int, str] | None = None,
) -> Diagnostic:
    """Build a diagnostic for ``rule`` pointing at the user's innermost frame (or ``location``)."""
    if location is not None:
        filename, lineno, function = location
    else:
        user = find_user_frame(frame if frame is not None else sys._getframe(1))
        if user is None:
            filename, lineno, function = "<unknown>", 0, "<unknown>"
        else:
            filename, lineno, function = (
                user.f_code.co_filename,
                user.f_lineno or 0,
                user.f_code.co_name,
            )
    source_line = linecache.getline(filename, lineno).strip() if lineno else ""
    return Diagnostic(
        code=rule.code,
        kind=rule.kind,
        title=rule.title,
        api=api,
        message=message,
        hint=rule.fix,
        why=rule.why,
        filename=filename,
        lineno=lineno,
        function=function,
        source_line=source_line,
        docs=rule.docs,
        phase=phase,
        label=label,
        thread=threading.current_thread().name,
        tensor=TensorInfo.of(tensor),
        details=details,
    )
