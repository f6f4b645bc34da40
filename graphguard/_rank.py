"""Which rank of a distributed job this process is, for diagnostics, log events and reports.

Read from ``torch.distributed`` when a default process group is initialized; nothing is
imported and nothing is asked otherwise. ``local_rank`` comes from ``LOCAL_RANK`` (set by
``torchrun``), and is the global rank where that variable is absent.
"""

from __future__ import annotations

import os
import sys

__all__ = ["RankInfo", "env_rank_info", "rank_fields", "rank_info"]

#: ``(rank, local_rank, world_size)``
RankInfo = tuple[int, int, int]


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def rank_info() -> RankInfo | None:
    """This process's rank while torch.distributed's default group is initialized, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        rank, world = int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # a group being torn down: no rank to report
        return None
    local = _env_int("LOCAL_RANK")
    return rank, rank if local is None else local, world


def env_rank_info() -> RankInfo | None:
    """The rank a launcher (``torchrun``) gave this process, from its environment; else the
    initialized group's; None for a single process."""
    info = rank_info()
    if info is not None:
        return info
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is None or world is None or world < 2:
        return None
    local = _env_int("LOCAL_RANK")
    return rank, rank if local is None else local, world


def rank_fields() -> dict[str, int]:
    """``rank``, ``local_rank`` and ``world_size`` for an event, or nothing outside a job."""
    info = rank_info()
    if info is None:
        return {}
    return {"rank": info[0], "local_rank": info[1], "world_size": info[2]}
