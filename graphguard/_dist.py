"""torch.distributed under graphguard: collective hazards, and no rank left hanging.

Two jobs, both dormant until a default process group is initialized (``docs/distributed.md``):

**Collective hazards.** The c10d functions (``dist.barrier``, ``dist.all_gather_object``,
``dist.all_reduce``, ...) are plain Python that a torch-function mode never sees, so they are
wrapped by ``_patches`` while a region is active, like ``torch.cuda.synchronize``. Barriers
(GG801) and object collectives (GG802) are reported before they run; a collective given CUDA
tensors on a group whose CUDA backend is gloo or missing is GG803 (only real CUDA tensors: in CPU
audit a CPU tensor stands for a device tensor and gloo stands for NCCL). ``Work.is_completed()``,
``Work.wait(timeout=...)`` and ``Work.wait()`` under blocking wait are GG804; a plain
``Work.wait()`` is a stream wait and legal.

**Agreement.** A hazard that ends a region on one rank leaves the other ranks waiting in a
collective that will never complete. Ranks therefore agree, through the default process group's
own store, at *agreement points*:

- in audit (collectives really run), before each collective issued inside a region;
- at the end of every region that issued at least one collective (under real capture the
  collectives were only recorded, so this is where a rank that failed is noticed).

A rank whose region ends with an exception posts a failure record (rank, code, line) under
``graphguard/v1/fail/<rank>``; a rank waiting at an agreement point that sees a peer's relevant
failure raises :class:`PeerFailedError` naming it, and a rank that is not joined by all ranks of
the group within the timeout (``GRAPHGUARD_DIST_TIMEOUT``, :func:`dist_timeout`) raises
:class:`AgreementTimeoutError` naming the missing ranks.

Points are named by the group and the group's own collective sequence number
(``ProcessGroup._get_sequence_number_for_group()``), which every rank of a group shares by
construction: keys are unique per collective and per region end, whatever regions ran before,
and the last rank to pass a point deletes its keys. A failure record carries the sequence numbers
the failing rank had reached; it is relevant at a point only if the failing rank had not passed
that point's collective before failing, and not if this rank has itself ended a region with an
error at or after it (both ranks already stopped).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from . import _state
from ._errors import AgreementTimeoutError, ConfigError, DistributedError, PeerFailedError
from ._frames import find_user_frame, is_internal
from ._log import get_logger, region_event
from ._report import Finding, report
from ._rules import KINDS, RULES
from ._state import GuardState, allow

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_TIMEOUT",
    "agree",
    "collective_calls",
    "current_timeout",
    "dist_timeout",
    "initialized",
    "post_failure",
    "region_enter",
    "region_exit",
    "work_checks",
]

ENV_TIMEOUT = "GRAPHGUARD_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
_PREFIX = "graphguard/v1"

_BARRIERS = ("barrier", "monitored_barrier")
_OBJECT_COLLECTIVES = (
    "all_gather_object",
    "gather_object",
    "broadcast_object_list",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
)
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "_all_gather_base",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "_reduce_scatter_base",
    "broadcast",
    "reduce",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "all_reduce_coalesced",
    "all_gather_coalesced",
)
_BLOCKING_WAIT_ENVS = ("TORCH_NCCL_BLOCKING_WAIT", "NCCL_BLOCKING_WAIT")


_NO_ATTR = object()


def initialized() -> bool:
    """Whether torch.distributed's default process group is initialized (nothing is imported).

    Every region asks, so this reads what ``dist.is_initialized()`` reads (the default group
    of c10d's ``_world``) without its three Python calls; the public API where that is not
    there.
    """
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    if c10d is None:  # never imported, or torch built without distributed support
        return False
    default_pg = getattr(getattr(c10d, "_world", None), "_default_pg", _NO_ATTR)
    if default_pg is not _NO_ATTR:
        return default_pg is not None
    try:  # pragma: no cover - a torch whose c10d keeps its default group elsewhere
        return bool(c10d.is_initialized())
    except Exception:  # pragma: no cover
        return False


# --- the timeout ------------------------------------------------------------------------------
_UNSET: Any = object()
_TIMEOUT: ContextVar[Any] = ContextVar("graphguard_dist_timeout", default=_UNSET)


def _parse_timeout(value: object, source: str) -> float | None:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "off":
            return None
        try:
            value = float(text)
        except ValueError:
            value = text
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        return float(value)
    raise ConfigError(
        f"{source}={value!r} is not valid; allowed values: a number of seconds > 0, or "
        f"{'None' if not source.startswith('GRAPHGUARD') else repr('off')} to switch the "
        "agreement between ranks off"
    )


def current_timeout() -> float | None:
    """The agreement timeout in seconds, or ``None`` when agreement is switched off."""
    value = _TIMEOUT.get()
    if value is not _UNSET:
        return value
    env = os.environ.get(ENV_TIMEOUT)
    if env is None or not env.strip():
        return DEFAULT_TIMEOUT_S
    return _parse_timeout(env, ENV_TIMEOUT)


@contextlib.contextmanager
def dist_timeout(seconds: float | None) -> Iterator[None]:
    """Set how long a rank waits for the other ranks at an agreement point (this context).

    ``seconds`` > 0, or ``None`` to switch the agreement off: ranks then neither wait for each
    other nor post failures. Overrides ``GRAPHGUARD_DIST_TIMEOUT`` (default 60 s). Applies to
    every region type (``capture``, ``guard``, ``graphed``) entered or running in the block.
    """
    value = None if seconds is None else _parse_timeout(seconds, "dist_timeout(seconds)")
    token = _TIMEOUT.set(value)
    try:
        yield
    finally:
        _TIMEOUT.reset(token)


# --- groups -----------------------------------------------------------------------------------
def _c10d() -> Any:
    import torch.distributed.distributed_c10d as c10d

    return c10d


def _resolve_group(group: Any) -> Any:
    c10d = _c10d()
    if group is None or group is getattr(c10d.GroupMember, "WORLD", None):
        return c10d._get_default_group()
    return group


def _group_name(group: Any) -> str:
    try:
        return str(group.group_name)
    except Exception:
        return f"pg{id(group)}"


#: Per group, the collectives this process issued inside regions: the fallback when the group
#: cannot report its own sequence number.
_own_counts: dict[str, int] = {}


#: Per group, collectives recorded by captures that failed and were discarded: they never run,
#: and the other ranks may not have recorded them, so they do not count (see ``_discard``).
_discarded: dict[str, int] = {}


def _seq(group: Any) -> int:
    """The group's collective sequence number as the ranks share it."""
    name = _group_name(group)
    try:
        raw = int(group._get_sequence_number_for_group())
    except Exception:
        raw = _own_counts.get(name, 0)
    return raw - _discarded.get(name, 0)


def _members(group: Any) -> list[int]:
    return [int(r) for r in _c10d().get_process_group_ranks(group)]


def _cuda_backend(group: Any) -> str | None:
    """The backend the group uses for CUDA tensors (``None``: it has none)."""
    name = str(_c10d().get_backend(group))
    if ":" not in name:
        return name
    mapping = dict(item.split(":", 1) for item in name.split(",") if ":" in item)
    return mapping.get("cuda")


# --- the checks -------------------------------------------------------------------------------
_signatures: dict[Any, inspect.Signature | None] = {}


def _bound(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    sig = _signatures.get(func, _UNSET)
    if sig is _UNSET:
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            sig = None
        _signatures[func] = sig
    if sig is None:
        return dict(kwargs)
    try:
        return dict(sig.bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return dict(kwargs)


def _tensors(value: Any, depth: int = 2) -> Iterator[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif depth > 0 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth - 1)
    elif depth > 0 and hasattr(value, "tensor") and hasattr(value, "op"):  # a P2POp
        yield from _tensors(value.tensor, 0)


def _group_of(name: str, arguments: dict[str, Any]) -> Any:
    if name == "batch_isend_irecv":
        ops = arguments.get("p2p_op_list") or []
        return _resolve_group(getattr(ops[0], "group", None) if ops else None)
    return _resolve_group(arguments.get("group"))


def _backend_finding(api: str, arguments: dict[str, Any], group: Any) -> Finding | None:
    cuda = next((t for v in arguments.values() for t in _tensors(v) if t.is_cuda), None)
    if cuda is None:
        return None
    backend = _cuda_backend(group)
    if backend == "gloo":
        return Finding("GG803", api, "gloo", tensor=cuda, facts={"backend": backend})
    if backend is None:
        name = str(_c10d().get_backend(group))
        return Finding("GG803", api, "no-cuda-backend", tensor=cuda, facts={"backend": name})
    return None


Call = Callable[[GuardState, Any, Any, tuple[Any, ...], dict[str, Any]], Any]


def _collective_call(name: str) -> Call:
    api = f"torch.distributed.{name}()"
    kind = "barrier" if name in _BARRIERS else "object" if name in _OBJECT_COLLECTIVES else ""

    def call(
        state: GuardState,
        wrapped: Any,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not initialized():
            return wrapped(*args, **kwargs)  # torch raises its own "not initialized" error
        arguments = _bound(wrapped, args, kwargs)
        group = _group_of(name, arguments)
        if kind == "barrier":
            finding: Finding | None = Finding("GG801", api)
        elif kind == "object":
            finding = Finding("GG802", api)
        else:
            finding = _backend_finding(api, arguments, group)
        if finding is not None:
            report(finding, state)  # raises under on_hazard="raise"
        _before_collective(state, group, api)
        if finding is None:
            return wrapped(*args, **kwargs)
        # The call was reported once: torch's own work inside it (pickling, host copies) is
        # not reported a second time.
        with allow(*KINDS):
            return wrapped(*args, **kwargs)

    return call


def collective_calls() -> list[tuple[Any, str, Call]]:
    """(owner, name, call) for every c10d function to wrap, in each module that binds it."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available():
        return []
    c10d = _c10d()
    out = []
    for owner in (dist, c10d):
        for name in (*_BARRIERS, *_OBJECT_COLLECTIVES, *_COLLECTIVES):
            if callable(vars(owner).get(name)):
                out.append((owner, name, _collective_call(name)))
    return out


def _is_completed(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Finding | None:
    if state.phase == "eager" or not initialized():
        return None
    return Finding("GG804", "Work.is_completed()", "is-completed")


def _wait(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Finding | None:
    if state.phase == "eager" or not initialized():
        return None
    timeout = kwargs.get("timeout", args[0] if args else None)
    if timeout is not None and getattr(timeout, "total_seconds", lambda: 0)() > 0:
        return Finding("GG804", "Work.wait(timeout)", "timeout")
    for env in _BLOCKING_WAIT_ENVS:
        if os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on"):
            return Finding("GG804", "Work.wait()", "blocking", facts={"env": f"{env}=1"})
    return None


Check = Callable[[GuardState, Any, tuple[Any, ...], dict[str, Any]], "Finding | None"]


#: DDP's runtime statistics are collected at the forward of iterations 1..10 (torch's
#: ``Reducer::should_collect_runtime_stats``): an 11th forward is the first without them.
DDP_WARM_UP = 11


def _ddp_forward(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Finding | None:
    import torch

    if state.phase == "eager" or not initialized():
        return None
    if state.phase == "audit" and not state.stands_for_capture:
        return None  # a graphed step's warm-up: these are the eager iterations DDP needs
    if not torch.is_grad_enabled() or not getattr(instance, "require_backward_grad_sync", True):
        return None  # no gradient sync this iteration: DDP collects no statistics
    if getattr(instance, "_use_python_reducer", False):
        return None
    try:
        data = instance._get_ddp_logging_data()
    except Exception:
        return None
    # "iteration" is the iteration count when statistics were last collected, at the start of
    # a forward: after k completed iterations (k <= 11) it reads k - 1.
    completed = int(data["iteration"]) + 1 if "iteration" in data else 0
    if completed >= DDP_WARM_UP:
        return None
    return Finding(
        "GG805", "DistributedDataParallel.forward()", facts={"iterations": max(completed, 0)}
    )


def work_checks() -> list[tuple[Any, str, Check]]:
    """(owner, name, check) for the ``Work`` methods that can wait on the host, and DDP's
    forward (its warm-up)."""
    dist = sys.modules.get("torch.distributed")
    work = getattr(dist, "Work", None) if dist is not None and dist.is_available() else None
    if work is None:
        return []
    out: list[tuple[Any, str, Check]] = []
    ddp = getattr(sys.modules.get("torch.nn.parallel"), "DistributedDataParallel", None)
    if ddp is not None and "forward" in vars(ddp):
        out.append((ddp, "forward", _ddp_forward))
    if "is_completed" in vars(work):
        out.append((work, "is_completed", _is_completed))
    if "wait" in vars(work):
        out.append((work, "wait", _wait))
    return out


# --- regions and agreement --------------------------------------------------------------------
@dataclass
class _Region:
    """What the outermost guard of a thread did with collectives: group name -> (group, its
    sequence number when the region entered or first used it), and the groups it issued a
    collective on through ``torch.distributed``'s Python functions."""

    groups: dict[str, tuple[Any, int]] = field(default_factory=dict)
    issued: set[str] = field(default_factory=set)


_regions: dict[int, _Region] = {}
_lock = threading.Lock()
#: Per failing rank, the highest failure record number this process has acted on.
_seen: dict[int, int] = {}
#: Where this rank ended a region with an error: (group name, sequence number, region ordinal).
_own_failures: set[tuple[str, int, int]] = set()
_posted = 0
#: How many outermost regions of this process ended while a default group was initialized:
#: the ordinal of the region running now. In a program whose ranks run the same regions (SPMD)
#: it tells two failures at the same sequence number in the same region (both ranks stopped:
#: nothing to tell each other) from failures in different regions.
_exits = 0


def _guards() -> tuple[GuardState, ...]:
    return _state._STACK.get()


def _outermost(state: GuardState) -> GuardState:
    guards = _guards()
    return guards[0] if guards else state


def _before_collective(state: GuardState, group: Any, api: str) -> None:
    """Note the collective for the region's end; in audit, agree with the group before it."""
    outer = _outermost(state)
    name = _group_name(group)
    seq = _seq(group)
    with _lock:
        region = _regions.setdefault(id(outer), _Region())
        first = region.groups.setdefault(name, (group, seq))[1]
        region.issued.add(name)
        _own_counts[name] = _own_counts.get(name, 0) + 1
    if state.phase == "capture":
        return  # recorded, not run: the ranks agree when the region ends
    timeout = current_timeout()
    if timeout is None:
        return
    _agree(
        f"c/{name}/{seq}",
        group,
        name,
        window=(first, seq),
        timeout=timeout,
        where=f"before {api}",
        label=state.label,
    )


def _store() -> Any:
    return _c10d()._get_default_store()


def _rank() -> int:
    return int(_c10d().get_rank())


def _agree(
    point: str,
    group: Any,
    name: str,
    *,
    window: tuple[int, int],
    timeout: float,
    where: str,
    label: str | None,
    pending: list[int] | None = None,
) -> None:
    """Wait until every rank of ``group`` reached ``point``; raise if one failed or is late."""
    agree(
        _store(),
        _rank(),
        _members(group),
        point,
        name,
        window=window,
        timeout=timeout,
        where=where,
        label=label,
        pending=pending,
        exit_point=pending is not None,
    )


def agree(
    store: Any,
    me: int,
    members: list[int],
    point: str,
    name: str,
    *,
    window: tuple[int, int],
    timeout: float,
    where: str,
    label: str | None,
    pending: list[int] | None = None,
    exit_point: bool = False,
) -> None:
    """The agreement protocol on ``store`` (any ``torch.distributed.Store``), for rank ``me``.

    Raises :class:`PeerFailedError` when a member posted a failure that concerns the point
    (see :func:`_peer_failure`), :class:`AgreementTimeoutError` after ``timeout`` seconds
    without every member; returns early, without agreement, when ``pending`` fills (Ctrl-C).
    """
    base = f"{_PREFIX}/{point}"
    keys = [f"{base}/{r}" for r in members]
    store.set(f"{base}/{me}", "1")
    deadline = time.monotonic() + timeout
    # The first wait grows with the group (0.2 ms for 2 ranks, 2 ms from 20 ranks on) and then
    # doubles up to 50 ms: a small job whose ranks arrive together passes within a few tries,
    # and a large one does not flood the store (each try reads every member's key).
    delay = min(0.002, 0.0001 * len(members))
    strikes = 0
    while True:
        # Keys first, then failures: a rank posts its failure before it can post a key at any
        # later point, so a failure read after the keys is never missed. Before a collective a
        # relevant failure wins even when every key is there: the failing rank never issued
        # this collective, and if it went on (it caught the error) its key may be its next
        # region's. At a region's end complete keys win: a rank that passed the end may have
        # failed in its next region since, at the same sequence number; a failure counts once
        # it is seen twice, 10 ms apart, with the keys still incomplete.
        complete = bool(store.check(keys))
        if exit_point and complete:
            break
        record = _peer_failure(store, members, me, name, window)
        if record is not None and not exit_point:
            _raise_peer_error(store, record, base, me, where, label)
        if complete:
            break
        if record is not None:
            strikes += 1
            if strikes >= 2:
                _raise_peer_error(store, record, base, me, where, label)
            delay = max(delay, 0.01)
        if pending:  # Ctrl-C while leaving a region: stop waiting, the interrupt goes first
            return
        now = time.monotonic()
        if now >= deadline:
            missing = [r for r, k in zip(members, keys, strict=True) if not store.check([k])]
            _withdraw(store, f"{base}/{me}")
            _log_event("graphguard.dist.timeout", where=where, label=label, missing=missing)
            region = f"guarded region {label!r}" if label else "a guarded region"
            raise AgreementTimeoutError(
                f"rank {me} waited {timeout:g} s {where} in {region} and rank(s) "
                f"{', '.join(map(str, missing))} of process group {name!r} did not arrive; "
                f"they may be slower (raise {ENV_TIMEOUT} or graphguard.dist_timeout()) or "
                "stopped outside a guarded region",
                missing,
            )
        time.sleep(min(delay, max(deadline - now, 0.0)))
        delay = min(delay * 2, 0.05)
    # The last rank to pass the point removes its keys: by then every rank has read them.
    passed = f"{base}/passed"
    if store.add(passed, 1) == len(members):
        for key in (*keys, passed):
            with contextlib.suppress(Exception):
                store.delete_key(key)


def _raise_peer_error(
    store: Any, record: dict[str, Any], base: str, me: int, where: str, label: str | None
) -> None:
    _seen[int(record["rank"])] = int(record.get("n", 0))
    _withdraw(store, f"{base}/{me}")
    raise _peer_error(record, me, where, label)


def _withdraw(store: Any, key: str) -> None:
    """This rank leaves a point it will not pass: its key must not let a later visit through."""
    with contextlib.suppress(Exception):
        store.delete_key(key)


def _peer_failure(
    store: Any, members: list[int], me: int, name: str, window: tuple[int, int]
) -> dict[str, Any] | None:
    """A peer's failure record that concerns this point, or None.

    ``window`` is the range of the group's sequence numbers this region has covered up to the
    point: a rank that failed with its sequence number inside it stopped before a collective
    this rank is about to issue (or has issued in the region). A higher number means it issued
    this point's collective before failing: the next point will see it.
    """
    if store.add(f"{_PREFIX}/failures", 0) == 0:
        return None
    for r in members:
        key = f"{_PREFIX}/fail/{r}"
        if r == me or not store.check([key]):
            continue
        try:
            record = json.loads(store.get(key))
        except (ValueError, TypeError):
            continue
        if int(record.get("n", 0)) <= _seen.get(r, 0):
            continue
        at = record.get("seqs", {}).get(name)
        if at is not None and not window[0] <= int(at) <= window[1]:
            continue  # it failed outside this region's span of the group's collectives
        if at is not None and (name, int(at), int(record.get("ordinal", -1))) in _own_failures:
            continue  # this rank ended the same region at the same point with an error too
        return record
    return None


def _peer_error(record: dict[str, Any], me: int, where: str, label: str | None) -> PeerFailedError:
    _note_own_failure()
    failed = record.get("rank")
    code = record.get("code")
    if code is not None:
        what = f"{code} [{record.get('kind')}] {RULES[code].title if code in RULES else ''}"
    else:
        what = str(record.get("error"))
    line = record.get("source_line")
    at = f"{record.get('filename')}:{record.get('lineno')}" + (f" (`{line}`)" if line else "")
    region = record.get("label")
    theirs = f"guarded region {region!r}" if region else "a guarded region"
    ours = f"its region {label!r}" if label else "its region"
    mine = find_user_frame(sys._getframe())
    here = f" at {mine.f_code.co_filename}:{mine.f_lineno}" if mine is not None else ""
    _log_event(
        "graphguard.dist.peer_failed",
        where=where,
        label=label,
        failed_rank=failed,
        failed_code=code,
        failed_location=f"{record.get('filename')}:{record.get('lineno')}",
    )
    return PeerFailedError(
        f"rank {failed} failed in {theirs} with {what.strip()} at {at}; "
        f"rank {me} ends {ours} {where}{here} instead of waiting for rank {failed}",
        record,
    )


def _log_event(event: str, **fields: Any) -> None:
    with contextlib.suppress(Exception):
        get_logger().warning(event, **fields)


def _known_groups() -> list[Any]:
    c10d = _c10d()
    groups = [c10d._get_default_group()]
    with contextlib.suppress(Exception):
        groups.extend(g for g in c10d._world.pg_map if g not in groups)
    return groups


def _current_seqs() -> dict[str, int]:
    seqs: dict[str, int] = {}
    with contextlib.suppress(Exception):
        for group in _known_groups():
            seqs[_group_name(group)] = _seq(group)
    return seqs


def _note_own_failure() -> dict[str, int]:
    """Remember where this rank ends a region with an error; returns the sequence numbers."""
    seqs = _current_seqs()
    _own_failures.update((name, seq, _exits) for name, seq in seqs.items())
    return seqs


def _failure_record(exc: BaseException, label: str | None) -> dict[str, Any]:
    diagnostic = getattr(exc, "diagnostic", None)
    if diagnostic is not None:
        return {
            "code": diagnostic.code,
            "kind": diagnostic.kind,
            "filename": diagnostic.filename,
            "lineno": diagnostic.lineno,
            "source_line": diagnostic.source_line,
            "api": diagnostic.api,
            "label": label,
            "error": type(exc).__name__,
        }
    filename, lineno, source = "<unknown>", 0, ""
    tb = exc.__traceback__
    while tb is not None:
        if not is_internal(tb.tb_frame.f_code.co_filename):
            filename, lineno = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    if lineno:
        import linecache

        source = linecache.getline(filename, lineno).strip()
    text = str(exc).strip().splitlines()
    return {
        "code": None,
        "kind": None,
        "filename": filename,
        "lineno": lineno,
        "source_line": source,
        "api": None,
        "label": label,
        "error": f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__,
    }


def _post_failure(exc: BaseException, label: str | None) -> None:
    seqs = _note_own_failure()
    post_failure(_store(), _rank(), exc, label, seqs, _exits)


def post_failure(
    store: Any,
    me: int,
    exc: BaseException,
    label: str | None,
    seqs: dict[str, int],
    ordinal: int,
) -> None:
    """Post rank ``me``'s failure record: ``exc``, the group sequence numbers it had reached
    and the ordinal of the region it failed in."""
    global _posted
    _posted += 1
    record = _failure_record(exc, label)
    record.update(rank=me, n=_posted, seqs=dict(seqs), ordinal=ordinal)
    store.set(f"{_PREFIX}/fail/{me}", json.dumps(record, sort_keys=True))
    store.add(f"{_PREFIX}/failures", 1)
    region_event(
        "graphguard.dist.failure_posted",
        label=label,
        code=record["code"],
        location=f"{record['filename']}:{record['lineno']}",
    )


def region_enter(state: GuardState) -> None:
    """Called once a guard is entered: an outermost guard notes the default group's sequence
    number, so that collectives issued from C++ (DDP's reducer) in the region are agreed on at
    its end too."""
    if not initialized():
        return
    guards = _guards()
    if not guards or guards[0] is not state:
        return
    with contextlib.suppress(Exception):
        group = _c10d()._get_default_group()
        region = _Region(groups={_group_name(group): (group, _seq(group))})
        with _lock:
            _regions[id(state)] = region


def region_exit(state: GuardState, exc: BaseException | None, pending: list[int]) -> None:
    """Called as a guard is left (before it is undone): the outermost guard of a thread posts a
    failure, or agrees with the groups it issued collectives on. Raises ``DistributedError``."""
    global _exits
    if not _regions and not initialized():
        return  # no distributed job: nothing to do, nothing imported
    guards = _guards()
    if not guards or guards[0] is not state:
        return  # a nested guard: its outermost guard speaks for the region
    with _lock:
        region = _regions.pop(id(state), None)
    if not initialized():
        return
    capturing = state.phase == "capture"
    try:
        _leave_region(state, exc, pending, region)
    except DistributedError:
        if capturing and region is not None:
            _discard(region)
        raise
    else:
        if exc is not None and capturing and region is not None:
            _discard(region)
    finally:
        _exits += 1


def _discard(region: _Region) -> None:
    """A capture that ends with an error is discarded: the collectives it recorded never run.

    The ranks' sequence numbers are brought back to where the region started, so that they
    agree again at the next point whatever each rank had recorded before the region failed.
    """
    with contextlib.suppress(Exception):
        for name, (group, first) in region.groups.items():
            recorded = _seq(group) - first
            if recorded > 0:
                _discarded[name] = _discarded.get(name, 0) + recorded


def _leave_region(
    state: GuardState, exc: BaseException | None, pending: list[int], region: _Region | None
) -> None:
    timeout = current_timeout()
    if timeout is None:
        return
    if exc is not None:
        if isinstance(exc, DistributedError):
            _note_own_failure()
        else:
            with contextlib.suppress(Exception):  # the original error is what the user needs
                _post_failure(exc, state.label)
        return
    if region is None:
        return
    for name, (group, first) in sorted(region.groups.items()):
        seq = _seq(group)
        if name not in region.issued and seq == first:
            continue  # no collective on this group in the region
        _agree(
            f"x/{name}/{seq}",
            group,
            name,
            window=(first, seq),
            timeout=timeout,
            where="at the end of the region",
            label=state.label,
            pending=pending,
        )
