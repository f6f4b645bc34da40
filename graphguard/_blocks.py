"""``graphguard.validate_blocks``: did the blocks you asked to graph exist, and were they graphed?

A lane-level check in the spirit of Megatron-Core's plain-Python validation of which layers may be
graphed: it needs no GPU for the existence check, and with ``graphed`` modules it also reports,
after some steps ran, which requested blocks never captured or fell back to eager.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch

from ._errors import ConfigError
from ._graphed import GraphedModule
from ._log import get_logger

__all__ = ["BlockReport", "validate_blocks"]


@dataclass(frozen=True)
class BlockReport:
    """The result of :func:`validate_blocks`; ``ok`` is True when nothing is wrong."""

    #: Requested entries (names, patterns or type names) that match no block of the model.
    missing: tuple[str, ...] = ()
    #: (block name, reason) for requested blocks that exist but did not run as a graph.
    eager: tuple[tuple[str, str], ...] = ()
    #: Graphed blocks that no request names.
    unrequested: tuple[str, ...] = ()
    #: Requested blocks that are graphed and replayed.
    graphed: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not (self.missing or self.eager or self.unrequested)

    def __str__(self) -> str:
        lines = [f"graphed and replaying: {', '.join(self.graphed) or 'none'}"]
        lines += [f"missing: {m} matches no block of the model" for m in self.missing]
        lines += [f"eager: {name}: {why}" for name, why in self.eager]
        lines += [
            f"unrequested: {name} is graphed but was not requested" for name in self.unrequested
        ]
        return "\n".join(lines)


def _blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """(name, block, inner module) for every block; a GraphedModule's inner module is hidden."""
    out: list[tuple[str, torch.nn.Module, torch.nn.Module]] = []
    hidden: set[str] = set()
    for name, module in model.named_modules():
        if any(name == h or name.startswith(h + ".") for h in hidden):
            # inside a graphed block: report its children under the block's own names
            continue
        if isinstance(module, GraphedModule):
            hidden.add(f"{name}.module" if name else "module")
            out.append((name, module, module.module))
            for sub_name, sub in module.module.named_modules():
                if sub_name:
                    out.append((f"{name}.{sub_name}" if name else sub_name, sub, sub))
        else:
            out.append((name, module, module))
    return out


def _matches(request: Any, name: str, inner: torch.nn.Module) -> bool:
    if isinstance(request, type):
        return isinstance(inner, request)
    return name == request or fnmatch.fnmatchcase(name, request)


def _validate_requests(requested: Any) -> list[Any]:
    if isinstance(requested, (str, type)) or not hasattr(requested, "__iter__"):
        raise ConfigError(
            f"requested={requested!r} is not valid; allowed values: a list of module names, "
            f"glob patterns (e.g. 'layers.*.mlp') or nn.Module subclasses"
        )
    items = list(requested)
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, torch.nn.Module):
                raise ConfigError(f"requested type {item.__name__} is not an nn.Module subclass")
        elif not isinstance(item, str) or not item.strip():
            raise ConfigError(
                f"requested entry {item!r} is not valid; allowed values: a non-empty module "
                f"name or glob pattern, or an nn.Module subclass"
            )
        elif item != item.strip() or ".." in item or item.startswith(".") or item.endswith("."):
            raise ConfigError(f"requested entry {item!r} is not a dotted module name or pattern")
    return items


def validate_blocks(model: torch.nn.Module, requested: Any) -> BlockReport:
    """Check the blocks a user asked to graph against ``model``.

    ``requested`` lists module names (``"layers.0.attn"``), glob patterns (``"layers.*.mlp"``)
    or ``nn.Module`` subclasses. Reports requested entries that match nothing, requested blocks
    that exist but are not graphed or ran eagerly (never captured, or fell back), and graphed
    blocks nobody requested. Each finding is also a ``graphguard.blocks`` log event.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"validate_blocks() needs an nn.Module, got {type(model).__name__}")
    requests = _validate_requests(requested)
    blocks = _blocks(model)
    missing, eager, graphed, matched_graphed = [], [], [], set()
    for request in requests:
        hits = [(n, b, inner) for n, b, inner in blocks if n and _matches(request, n, inner)]
        if not hits:
            missing.append(request.__name__ if isinstance(request, type) else request)
            continue
        for name, block, _inner in hits:
            if not isinstance(block, GraphedModule):
                eager.append((name, "requested but not graphed (wrap it with graphguard.graphed)"))
                continue
            matched_graphed.add(name)
            stats = block.stats
            if stats["eager"]:
                eager.append((name, f"fell back to eager: {stats['eager_reason'].splitlines()[0]}"))
            elif stats["graphs"] == 0:
                eager.append((name, f"graphed but never captured ({stats['calls']} calls so far)"))
            else:
                graphed.append(name)
    unrequested = [
        n for n, b, _ in blocks if isinstance(b, GraphedModule) and n not in matched_graphed
    ]
    report = BlockReport(
        missing=tuple(missing),
        eager=tuple(dict.fromkeys(eager)),
        unrequested=tuple(unrequested),
        graphed=tuple(dict.fromkeys(graphed)),
    )
    log = get_logger()
    for m in report.missing:
        log.warning("graphguard.blocks", finding="missing", block=m)
    for name, why in report.eager:
        log.warning("graphguard.blocks", finding="eager", block=name, reason=why)
    for name in report.unrequested:
        log.warning("graphguard.blocks", finding="unrequested", block=name)
    return report
