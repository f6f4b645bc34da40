"""Diagnostics are data: a frozen record of one hazard, rendered to text by ``__str__``.

The record never holds tensor values, only their shape, dtype and device.
"""

from __future__ import annotations

import linecache
import sys
import threading
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

from ._frames import find_user_frame
from ._rank import rank_info
from ._rules import Rule

__all__ = [
    "Diagnostic",
    "TensorInfo",
    "describe_tensor",
    "escape_controls",
    "make_diagnostic",
    "more_scalars",
    "safe_value",
]


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


def describe_tensor(obj: Any) -> str:
    """A tensor's description for messages (device, shape, dtype), or ``"a value"``."""
    info = TensorInfo.of(obj)
    if info is None:
        return "a value"
    return (
        f"a {info.device.split(':')[0]} tensor of shape {info.shape} and dtype torch.{info.dtype}"
    )


def more_scalars(count: int) -> str:
    """The tail of a GG601 message when several scalars changed."""
    return f" ({count} scalars changed, all listed below)" if count > 1 else ""


def safe_value(value: Any) -> str:
    """``repr`` of a host scalar for a message; tensors are described, never printed."""
    if TensorInfo.of(value) is not None:
        return describe_tensor(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    #: In a torch.distributed job (default group initialized): this process's global rank,
    #: its ``LOCAL_RANK`` and the world size; ``None`` otherwise.
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None

    @property
    def location(self) -> str:
        return f"{self.filename}:{self.lineno}"

    @property
    def rank_suffix(self) -> str:
        """`` (rank 1 of 2, local rank 1)`` in a distributed job, else empty."""
        if self.rank is None:
            return ""
        return f" (rank {self.rank} of {self.world_size}, local rank {self.local_rank})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tensor info flattened)."""
        data = asdict(self)
        tensor = data.pop("tensor")
        if self.rank is None:  # not a distributed job: no rank fields at all
            for key in ("rank", "local_rank", "world_size"):
                data.pop(key)
        data["details"] = dict(self.details)
        if tensor is not None:
            data["tensor_shape"] = list(tensor["shape"])
            data["tensor_dtype"] = tensor["dtype"]
            data["tensor_device"] = tensor["device"]
        return data

    def __str__(self) -> str:
        e = escape_controls
        gutter = " " * len(str(self.lineno))
        where = f"{e(self.location)} in {e(self.function)}"
        lines = [
            f"{self.code} [{self.kind}] {e(self.title)}{self.rank_suffix}",
            f"{gutter}--> {where}",
        ]
        if self.source_line:
            lines += [f"{gutter} |", f"{self.lineno} |     {e(self.source_line)}", f"{gutter} |"]
        lines.append(f"{gutter} = what: {e(self.message)}")
        for key, value in self.details:
            lines.append(f"{gutter} = {e(key)}: {e(value)}")
        lines.append(f"{gutter} = why: {e(self.why)}")
        lines.append(f"{gutter} = fix: {e(self.hint)}")
        lines.append(f"{gutter} = docs: {self.docs} (or `graphguard rules {self.code}`)")
        return "\n".join(lines)


#: Characters a terminal acts on besides C0/C1 controls: the bidirectional overrides and marks
#: that reorder how a line is displayed.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def escape_controls(text: object) -> str:
    """``text`` with every control character written as a Python escape (``\\x1b``, ``\\n``).

    Labels, file names, function names and source lines come from the user's program; written
    raw, an ESC sequence or a newline in them would act on the terminal or forge report lines.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable() and c not in _BIDI:
            out.append(c)
        elif ord(c) < 0x100:
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


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
    ranks = rank_info()
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
        docs=rule.docs_link,
        phase=phase,
        label=label,
        thread=threading.current_thread().name,
        tensor=TensorInfo.of(tensor),
        details=details,
        rank=None if ranks is None else ranks[0],
        local_rank=None if ranks is None else ranks[1],
        world_size=None if ranks is None else ranks[2],
    )
