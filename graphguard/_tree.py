"""Walking nested arguments: tuples, lists, dicts and dataclasses, down to their leaves.

``flatten`` returns the leaves, a readable path for each (``args[0]['x'].lengths``) and a
hashable signature of the structure (container types, keys, and which leaves are tensors). The
structure itself is never stored: ``rebuild`` walks a template object of the same structure and
puts new leaves in place, so dataclasses keep their other attributes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["flatten", "rebuild"]


def _children(obj: Any) -> tuple[str, Any, list[tuple[str, Any]]] | None:
    """(kind, structural key, [(path suffix, child)]) for a container, or None for a leaf."""
    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, tuple):
        kind = type(obj) if hasattr(obj, "_fields") else tuple
        return ("tuple", kind, [(f"[{i}]", v) for i, v in enumerate(obj)])
    if isinstance(obj, list):
        return ("list", len(obj), [(f"[{i}]", v) for i, v in enumerate(obj)])
    if isinstance(obj, dict):
        keys = tuple(obj)
        return ("dict", keys, [(f"[{k!r}]", obj[k]) for k in keys])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = tuple(f.name for f in dataclasses.fields(obj))
        return ("dataclass", (type(obj), names), [(f".{n}", getattr(obj, n)) for n in names])
    return None


def flatten(obj: Any, path: str = "") -> tuple[list[Any], list[str], tuple[Any, ...]]:
    leaves: list[Any] = []
    paths: list[str] = []
    sig = _flatten_into(obj, path, leaves, paths)
    return leaves, paths, sig


def _flatten_into(obj: Any, path: str, leaves: list[Any], paths: list[str]) -> tuple[Any, ...]:
    node = _children(obj)
    if node is None:
        leaves.append(obj)
        paths.append(path)
        return ("T",) if isinstance(obj, torch.Tensor) else ("V", type(obj))
    kind, key, children = node
    return (kind, key, tuple(_flatten_into(c, path + s, leaves, paths) for s, c in children))


def rebuild(template: Any, leaves: Iterator[Any]) -> Any:
    """``template`` with each leaf replaced by the next of ``leaves`` (same walk as flatten)."""
    node = _children(template)
    if node is None:
        return next(leaves)
    kind, _key, children = node
    values = [rebuild(child, leaves) for _s, child in children]
    if kind == "tuple":
        return type(template)(*values) if hasattr(template, "_fields") else tuple(values)
    if kind == "list":
        return values
    if kind == "dict":
        out = copy.copy(template)
        out.update(zip(template, values, strict=True))
        return out
    obj = copy.copy(template)
    for field, value in zip(dataclasses.fields(template), values, strict=True):
        object.__setattr__(obj, field.name, value)
    return obj
