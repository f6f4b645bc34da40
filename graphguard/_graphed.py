"""``graphguard.graphed``: capture a step once per shape class, replay it safely afterwards.

Every call has exactly the effect of one eager call:

- the first ``warmup`` calls of a shape class run eagerly (on a side stream where CUDA is
  available, under the audit guard, so hazards surface before any capture);
- the next call is captured with ``graphguard.capture`` and the graph is replayed once (a capture
  records work, it does not run it);
- later calls check the Python scalars the capture consumed (``stale-host-scalar``), copy their
  tensors into the static inputs and replay.

Without CUDA the same state machine runs with eager calls under the audit guard, so the same
hazards (stale scalars, stale outputs, graph limits) are reported in CPU-only CI.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._capture import Capture, validate_label, validate_on_hazard
from ._diagnostic import Diagnostic, more_scalars, safe_value
from ._errors import ConfigError, GraphLimitError, HazardError
from ._frames import trim_traceback
from ._outputs import Generation, wrap_output
from ._report import Finding, FixedScope, emit, report
from ._scalars import ScalarSnapshot, _same, watch_optimizers
from ._session import guarded, new_state
from ._state import overrides
from ._tree import flatten, rebuild
from ._verify import (
    StateMap,
    Verify,
    collect_state,
    resolve_verify,
    step_location,
    step_roots,
    verify_finding,
    verify_replay,
)

__all__ = ["Graphed", "GraphedModule", "graphed"]

GRAPH_LIMIT_POLICIES = ("eager", "error")


class _Entry:
    """One shape class of a graphed step: its warm-up count, graph, static buffers and scalars."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.calls = 0
        self.captured = False
        self.capture: Capture | None = None
        self.static_leaves: list[Any] = []
        self.out_template: Any = None
        self.out_leaves: list[Any] = []
        self.scalars = ScalarSnapshot()
        self.arg_values: list[tuple[int, str, Any]] = []
        self.generation: Generation | None = None
        self.replays = 0
        #: With buckets: which outputs hold one row per input row (cut back to the real batch);
        #: ``None`` until the first padded call proved padding leaves the result unchanged.
        self.pad_slices: list[bool] | None = None
        #: verify=: replays of this shape class checked so far, and the ids of the state
        #: tensors that existed before the capture (others were allocated by it).
        self.verified = 0
        self.state_ids: set[int] = set()


class Graphed:
    """A graphed step. Create it with :func:`graphed`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        warmup: int = 3,
        on_hazard: str = "raise",
        max_graphs: int = 8,
        on_graph_limit: str = "eager",
        buckets: Sequence[int] | Callable[[int], int] | None = None,
        clone_outputs: bool = False,
        label: str | None = None,
        pool: Any = None,
        verify: Any = 0,
        module: torch.nn.Module | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"graphed() needs a function or an nn.Module, got {fn!r}")
        _validate_options(
            warmup=warmup,
            on_hazard=on_hazard,
            max_graphs=max_graphs,
            on_graph_limit=on_graph_limit,
            buckets=buckets,
            label=label,
        )
        if buckets is not None and not callable(buckets):
            buckets = sorted(set(buckets))
        self.fn = fn
        self.module = module
        self.warmup = warmup
        self.on_hazard = on_hazard
        self.max_graphs = max_graphs
        self.on_graph_limit = on_graph_limit
        self.buckets = buckets
        self.clone_outputs = bool(clone_outputs)
        self.label: str = label or str(getattr(fn, "__qualname__", type(fn).__qualname__))
        self.pool = pool
        self.verify: Verify | None = resolve_verify(verify)
        self.eager_reason: Diagnostic | str | None = None
        self._entries: dict[Any, _Entry] = {}
        self._calls = 0
        self._limit_warned = False
        self._lock = threading.RLock()
        self._side_stream: Any = None
        self._last_findings: list[Diagnostic] = []
        self._replay_hazards: list[Diagnostic] = []
        try:
            self._params = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            self._params = []

    # -- statistics -------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Counts of calls, graphs captured, replays, and whether the step went eager for good."""
        return {
            "calls": self._calls,
            "graphs": sum(1 for e in self._entries.values() if e.captured),
            "replays": sum(e.replays for e in self._entries.values()),
            "eager": self.eager_reason is not None,
            "eager_reason": str(self.eager_reason) if self.eager_reason is not None else None,
        }

    # -- the call ---------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return self._call(args, kwargs)
        except HazardError as exc:  # the traceback ends at the user's line, then the diagnostic
            trim_traceback(exc)
            raise

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            self._calls += 1
            if self.eager_reason is not None:
                return self.fn(*args, **kwargs)
            leaves, paths, sig = flatten((args, kwargs))
            leaves, real_batch = self._pad(leaves)
            key = (
                sig,
                tuple(
                    (tuple(t.shape), t.dtype, t.device, t.requires_grad)
                    for t in leaves
                    if isinstance(t, torch.Tensor)
                ),
                torch.is_grad_enabled(),
                self.module.training if self.module is not None else None,
            )
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self.max_graphs:
                    return self._over_limit(args, kwargs)
                entry = self._entries[key] = _Entry(key)
            if real_batch is not None and entry.pad_slices is None:
                return self._prove_padding(entry, args, kwargs, leaves, real_batch)
            return self._call_entry(entry, args, kwargs, leaves, paths, real_batch)

    def _call_entry(
        self,
        entry: _Entry,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        paths: list[str],
        real_batch: int | None,
    ) -> Any:
        # `graphguard check` forces audit: the CPU path then runs on any machine.
        cuda = torch.cuda.is_available() and not overrides.force_audit
        if entry.calls < self.warmup:
            entry.calls += 1
            return self._run_eager(args, kwargs, guard=True, side_stream=cuda)
        if not entry.captured:
            entry.calls += 1
            return self._capture(entry, args, kwargs, leaves, paths, real_batch, cuda)
        stale = self._stale_scalars(entry, leaves)
        if stale:
            return self._on_stale(stale, args, kwargs)
        entry.calls += 1
        previous = entry.generation
        verifying = self.verify is not None and entry.verified < self.verify.replays
        if not cuda:
            args, kwargs = self._padded_args(args, kwargs, leaves, real_batch)

            def emulated() -> tuple[Any, list[Any]]:
                out = self._run_eager(args, kwargs, guard=True, side_stream=False)
                return out, flatten(out)[0]

            out = self._verified(entry, args, kwargs, emulated) if verifying else emulated()[0]
            if previous is not None:  # after the call: an output may be this call's input
                previous.overwritten_by = self._calls
            return self._wrap(entry, out, None, real_batch, template=out)
        for static, new in zip(entry.static_leaves, leaves, strict=True):
            if isinstance(static, torch.Tensor):
                _copy_into(static, new)
        if previous is not None:  # inputs are copied; the replay now overwrites the outputs
            previous.overwritten_by = self._calls
        capture = entry.capture
        assert capture is not None

        def replayed() -> tuple[Any, list[Any]]:
            capture.replay()
            return None, entry.out_leaves

        if verifying:
            static_args, static_kwargs = rebuild((args, kwargs), iter(entry.static_leaves))
            self._verified(entry, static_args, static_kwargs, replayed)
        else:
            replayed()
        entry.replays += 1
        return self._wrap(entry, None, entry.out_leaves, real_batch, template=entry.out_template)

    # -- verify= -------------------------------------------------------------------------------
    def _state(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> StateMap:
        cuda = torch.cuda.is_available() and not overrides.force_audit
        return collect_state(step_roots(self.fn, self.module, args, kwargs), device_only=cuda)

    def _verified(
        self,
        entry: _Entry,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        replay: Callable[[], tuple[Any, list[Any]]],
    ) -> Any:
        """One replay checked against an eager run of the step from the same state (GG901)."""
        assert self.verify is not None
        entry.verified += 1
        state = self._state(args, kwargs)
        allocated = {p for p, t in state.tensors if id(t) not in entry.state_ids}
        baked = [item.name for item in entry.scalars.items]
        outcome = verify_replay(
            state=state,
            replay=replay,
            eager=lambda: self.fn(*args, **kwargs),
            options=self.verify,
            allocated_in_capture=allocated,
            baked=baked,
        )
        if outcome.mismatches:
            finding = verify_finding(
                f"replay of {self.label!r}",
                self.label,
                entry.verified,
                outcome,
                step_location(self.fn),
            )
            report(finding, FixedScope(self.on_hazard, self.label, "replay", region=self))
        return outcome.result

    # -- eager paths --------------------------------------------------------------------------
    def _run_eager(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, guard: bool, side_stream: bool
    ) -> Any:
        if side_stream:
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream()
            side = self._side_stream
            side.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(side):
                    return self._run_eager(args, kwargs, guard=guard, side_stream=False)
            finally:
                torch.cuda.current_stream().wait_stream(side)
        if not guard:
            return self.fn(*args, **kwargs)
        state = new_state(on_hazard=self.on_hazard, label=self.label)
        # On the GPU these runs (warm-ups, shape classes over the limit) are plain eager work,
        # not an audit standing for a capture: capture-aware code must see "not capturing".
        state.stands_for_capture = not torch.cuda.is_available() or overrides.force_audit
        self._last_findings = state.findings
        with guarded(state):
            return self.fn(*args, **kwargs)

    def _over_limit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        message = (
            f"graphed step {self.label!r} already holds max_graphs={self.max_graphs} graphs and "
            f"this call's input shapes match none of them"
        )
        if self.on_graph_limit == "error":
            raise GraphLimitError(
                message + "; raise max_graphs, pass buckets= to pad inputs to captured shape "
                "classes, or use on_graph_limit='eager'"
            )
        if not self._limit_warned:
            self._limit_warned = True
            emit(
                "warning",
                "graphguard.graphed.limit",
                label=self.label,
                message=message,
                action="running this shape class eagerly",
            )
        return self._run_eager(args, kwargs, guard=True, side_stream=False)

    # -- capture ----------------------------------------------------------------------------------
    def _capture(
        self,
        entry: _Entry,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        paths: list[str],
        real_batch: int | None,
        cuda: bool,
    ) -> Any:
        # Snapshot what the step reads *before* it runs: a value the step itself changes is then
        # reported at the next call, since replays will not change it again.
        self._track_scalars(entry, leaves, paths)
        if self.verify is not None:
            entry.state_ids = self._state(args, kwargs).ids()
        if not cuda:
            args, kwargs = self._padded_args(args, kwargs, leaves, real_batch)
            with watch_optimizers() as watch:
                out = self._run_eager(args, kwargs, guard=True, side_stream=False)
            for item in watch.items:
                entry.scalars.add(item)
            if self._last_findings and self.on_hazard != "raise":
                # Mirrors the GPU: a hazard in the capturing call makes the step eager for good.
                return self._go_eager(self._last_findings[0], out)
            entry.captured = True
            return self._wrap(entry, out, None, real_batch, template=out)

        statics = [
            _static_copy(leaf) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves
        ]
        static_args, static_kwargs = rebuild((args, kwargs), iter(statics))
        cap = Capture(mode="capture", on_hazard=self.on_hazard, label=self.label, pool=self.pool)
        with watch_optimizers() as watch, cap:
            out = self.fn(*static_args, **static_kwargs)
        for item in watch.items:
            entry.scalars.add(item)
        if cap.fell_back:
            # The region already finished this call eagerly, with the call's own inputs.
            return self._go_eager(cap.hazards[0], out)
        cap.replay()
        entry.capture = cap
        entry.captured = True
        entry.static_leaves = statics
        entry.replays += 1
        out_leaves, _paths, _sig = flatten(out)
        entry.out_leaves = out_leaves
        entry.out_template = out
        return self._wrap(entry, None, out_leaves, real_batch, template=out)

    def _go_eager(self, diagnostic: Diagnostic, out: Any) -> Any:
        self.eager_reason = diagnostic
        emit(
            "warning",
            "graphguard.graphed.eager",
            label=self.label,
            code=diagnostic.code,
            location=diagnostic.location,
            message="a hazard during capture made this step eager for good",
        )
        return out

    def _track_scalars(self, entry: _Entry, leaves: list[Any], paths: list[str]) -> None:
        entry.arg_values = [
            (i, paths[i], leaf)
            for i, leaf in enumerate(leaves)
            if not isinstance(leaf, torch.Tensor) and _is_trackable(leaf)
        ]
        if self.module is not None:
            entry.scalars.add_module_tree(self.module, name=type(self.module).__name__)
            return
        reached = entry.scalars.add_code_reads(self.fn)
        for obj in reached:
            if isinstance(obj, torch.nn.Module):
                entry.scalars.add_module_tree(obj, name=_name_in_code(self.fn, obj))
        for leaf in leaves:
            if isinstance(leaf, torch.nn.Module):
                entry.scalars.add_module_tree(leaf, name=type(leaf).__name__)

    # -- stale host scalars ---------------------------------------------------------------------
    def _stale_scalars(
        self, entry: _Entry, leaves: list[Any]
    ) -> list[tuple[str, Any, Any, str, int]]:
        stale = []
        for index, path, captured in entry.arg_values:
            current = leaves[index]
            if not _same(current, captured):
                stale.append((self._arg_name(path), captured, current, "", 0))
        for item, current in entry.scalars.changed():
            stale.append((item.name, item.captured, current, item.filename, item.lineno))
        return stale

    def _arg_name(self, path: str) -> str:
        # paths look like "[0][1]..." (positional) or "[1]['alpha']..." (keyword)
        if path.startswith("[0]["):
            rest = path[len("[0][") :]
            index_text, _, tail = rest.partition("]")
            if index_text.isdigit() and int(index_text) < len(self._params):
                return f"argument {self._params[int(index_text)]}{tail}"
            return f"args[{index_text}]{tail}"
        if path.startswith("[1]["):
            rest = path[len("[1][") :]
            key, _, tail = rest.partition("]")
            return f"argument {key.strip(chr(39))}{tail}"
        return path

    def _on_stale(
        self,
        stale: list[tuple[str, Any, Any, str, int]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        name, captured, current, filename, lineno = stale[0]
        location = None
        if lineno:
            location = (filename, lineno, str(getattr(self.fn, "__name__", self.label)))
        finding = Finding(
            "GG601",
            f"replay of {self.label!r}",
            facts={
                "name": name,
                "captured": safe_value(captured),
                "current": safe_value(current),
                "more": more_scalars(len(stale)),
            },
            details=tuple(
                (n, f"captured {safe_value(c)}, now {safe_value(v)}" + _consumed_at(f, ln))
                for n, c, v, f, ln in stale
            ),
            location=location,
        )
        # warn / fallback: replaying would be silently wrong, so the step runs eagerly from now
        # on (``fall_back``); allowed or collected: the step runs eagerly this once.
        report(finding, FixedScope(self.on_hazard, self.label, "replay", region=self))
        return self._run_eager(args, kwargs, guard=False, side_stream=False)

    # -- the region interface (what the reporting path calls back) ------------------------------
    capturing = False

    @property
    def hazards(self) -> list[Diagnostic]:
        return self._replay_hazards

    def fall_back(self, diagnostic: Diagnostic) -> str:
        self.eager_reason = diagnostic
        return "eager-for-good"

    # -- inputs and outputs ---------------------------------------------------------------------
    def _pad(self, leaves: list[Any]) -> tuple[list[Any], int | None]:
        if self.buckets is None:
            return leaves, None
        tensors = [t for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0]
        if not tensors:
            return leaves, None
        batch = tensors[0].shape[0]
        if callable(self.buckets):
            padded = int(self.buckets(batch))
            if padded < batch:
                raise ConfigError(f"buckets({batch}) returned {padded}, smaller than the batch")
        else:
            padded = next((b for b in self.buckets if b >= batch), batch)
        if padded == batch:
            return leaves, None
        out = []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and leaf.dim() > 0 and leaf.shape[0] == batch:
                pad = leaf.new_zeros((padded - batch, *leaf.shape[1:]))
                leaf = torch.cat([leaf, pad])
            out.append(leaf)
        return out, batch

    @staticmethod
    def _padded_args(
        args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], real_batch: int | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with padded tensors, so the CPU path audits what a GPU runs."""
        if real_batch is None:
            return args, kwargs
        padded_args, padded_kwargs = rebuild((args, kwargs), iter(leaves))
        return tuple(padded_args), padded_kwargs

    def _prove_padding(
        self,
        entry: _Entry,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        real_batch: int,
    ) -> Any:
        """First padded call of a shape class: show that padding leaves the result unchanged.

        The step runs eagerly twice, on the call's own input (whose result is returned) and on
        the padded input; outputs must agree, those with one row per input row after cutting
        the padding rows off. Any difference is a ``ConfigError`` naming the output: a padded
        result is never returned silently changed. Later calls of the class are graphed.
        """
        cuda = torch.cuda.is_available() and not overrides.force_audit
        exact = self._run_eager(args, kwargs, guard=True, side_stream=cuda)
        padded_args, padded_kwargs = self._padded_args(args, kwargs, leaves, real_batch)
        padded_out = self._run_eager(padded_args, padded_kwargs, guard=True, side_stream=cuda)
        padded_batch = next(
            t.shape[0] for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0
        )
        entry.pad_slices = self._padding_slices(exact, padded_out, real_batch, padded_batch)
        return exact

    def _padding_slices(
        self, exact: Any, padded: Any, real_batch: int, padded_batch: int
    ) -> list[bool]:
        exact_leaves, exact_paths, exact_sig = flatten(exact)
        padded_leaves, _paths, padded_sig = flatten(padded)

        def refuse(path: str, what: str) -> ConfigError:
            name = f"output{path}" if path else "the output"
            return ConfigError(
                f"graphed step {self.label!r}: padding the batch from {real_batch} to "
                f"{padded_batch} rows (buckets={self.buckets!r}) changes {name}: {what}. The "
                f"step is not row-independent in its first dimension (a mean, a norm or another "
                f"reduction over the batch mixes the zero padding rows in), so padding would "
                f"change its result silently; remove buckets= for this step"
            )

        if exact_sig != padded_sig or len(exact_leaves) != len(padded_leaves):
            raise refuse("", "its structure differs")
        slices = []
        for path, e, p in zip(exact_paths, exact_leaves, padded_leaves, strict=True):
            if not isinstance(e, torch.Tensor):
                if not _same_value(e, p):
                    raise refuse(path, "its value differs")
                slices.append(False)
                continue
            cut = (
                e.shape != p.shape
                and p.dim() > 0
                and e.dim() > 0
                and p.shape[0] == padded_batch
                and e.shape[0] == real_batch
                and p.shape[1:] == e.shape[1:]
            )
            candidate = p[:real_batch] if cut else p
            if candidate.shape != e.shape or candidate.dtype != e.dtype:
                raise refuse(
                    path,
                    f"shape {tuple(candidate.shape)} instead of {tuple(e.shape)}",
                )
            if not _close(e, candidate):
                raise refuse(path, "its values differ")
            slices.append(cut)
        return slices

    def _wrap(
        self,
        entry: _Entry,
        out: Any,
        out_leaves: list[Any] | None,
        real_batch: int | None,
        *,
        template: Any,
    ) -> Any:
        if out_leaves is None:
            out_leaves, _p, _s = flatten(out)
        slices = entry.pad_slices if real_batch is not None else None
        generation = Generation(self._calls, self.label, self.on_hazard)
        entry.generation = generation
        wrapped = []
        for i, leaf in enumerate(out_leaves):
            if isinstance(leaf, torch.Tensor):
                if slices is not None and i < len(slices) and slices[i]:
                    leaf = leaf[:real_batch]
                leaf = leaf.clone() if self.clone_outputs else wrap_output(leaf, generation, i)
            wrapped.append(leaf)
        return rebuild(template, iter(wrapped))

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        # Used as a method (``@graphed`` on ``def step(self, ...)``): bind like a function.
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    @property
    def graphed(self) -> Graphed:
        """The step itself (so ``fn.graphed`` and ``module.graphed`` both work)."""
        return self

    def __repr__(self) -> str:
        return f"<graphguard.Graphed {self.label!r} {self.stats}>"


def _validate_options(
    *,
    warmup: object,
    on_hazard: object,
    max_graphs: object,
    on_graph_limit: object,
    buckets: object,
    label: object,
    clone_outputs: object = False,
    pool: object = None,
) -> None:
    """Raise ``ConfigError`` for an option of ``graphed()`` that is not valid.

    ``clone_outputs`` (any truth value) and ``pool`` (torch checks it at capture) are accepted
    as they are, so ``graphed()`` can pass all its options through.
    """
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} is not valid; allowed values: an int >= 0")
    if not isinstance(max_graphs, int) or isinstance(max_graphs, bool) or max_graphs < 1:
        raise ConfigError(f"max_graphs={max_graphs!r} is not valid; allowed values: an int >= 1")
    if on_graph_limit not in GRAPH_LIMIT_POLICIES:
        raise ConfigError.bad_choice("on_graph_limit", on_graph_limit, GRAPH_LIMIT_POLICIES)
    if (
        buckets is not None
        and not callable(buckets)
        and not (
            isinstance(buckets, Sequence)
            and buckets
            and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets)
        )
    ):
        raise ConfigError(
            f"buckets={buckets!r} is not valid; allowed values: a non-empty sequence of "
            f"positive ints, a callable size -> padded size, or None"
        )
    validate_on_hazard(on_hazard)
    validate_label(label)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two outputs agree (floating point: up to a reduction-order difference)."""
    with torch.no_grad(), torch._C.DisableTorchFunction():
        if a.is_floating_point() or a.is_complex():
            return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True))
        return bool(torch.equal(a, b))


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) or (a != a and b != b)
    except Exception:
        return a is b


def _consumed_at(filename: str, lineno: int) -> str:
    return f" (consumed at {filename}:{lineno})" if lineno else ""


def _is_trackable(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, type(None))) or (
        isinstance(value, tuple) and all(isinstance(v, (bool, int, float, str)) for v in value)
    )


def _static_copy(t: torch.Tensor) -> torch.Tensor:
    static = t.detach().clone()
    if t.requires_grad:
        static.requires_grad_(True)
    return static


def _copy_into(static: torch.Tensor, new: torch.Tensor) -> None:
    if static.data_ptr() == new.data_ptr():
        return
    with torch.no_grad():
        static.copy_(new, non_blocking=True)


def _name_in_code(fn: Any, obj: Any) -> str:
    func = getattr(fn, "__func__", fn)
    for name, value in getattr(func, "__globals__", {}).items():
        if value is obj:
            return name
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
        try:
            if cell.cell_contents is obj:
                return name
        except ValueError:
            continue
    return type(obj).__name__


class GraphedModule(torch.nn.Module):
    """An ``nn.Module`` whose calls go through a :class:`Graphed` step (``graphed(module)``)."""

    def __init__(self, module: torch.nn.Module, **options: Any) -> None:
        super().__init__()
        self.module = module
        options.setdefault("label", type(module).__qualname__)
        self.graphed = Graphed(module, module=module, **options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graphed(*args, **kwargs)

    @property
    def stats(self) -> dict[str, Any]:
        return self.graphed.stats


def graphed(
    fn: Any = None,
    /,
    *,
    warmup: int = 3,
    on_hazard: str = "raise",
    max_graphs: int = 8,
    on_graph_limit: str = "eager",
    buckets: Sequence[int] | Callable[[int], int] | None = None,
    clone_outputs: bool = False,
    label: str | None = None,
    pool: Any = None,
    verify: Any = 0,
) -> Any:
    """Capture ``fn`` (a function or an ``nn.Module``) once per shape class and replay it safely.

    Usable bare (``@graphed``), with options (``@graphed(warmup=3)``) or on a module
    (``graphed(model)`` returns a callable ``nn.Module``). ``verify=N`` (or
    ``graphguard.Verify(...)``) checks the first ``N`` replays of each shape class against the
    eager step (``docs/verify.md``). See ``docs/contract.md``.
    """
    options = {
        "warmup": warmup,
        "on_hazard": on_hazard,
        "max_graphs": max_graphs,
        "on_graph_limit": on_graph_limit,
        "buckets": buckets,
        "clone_outputs": clone_outputs,
        "label": label,
        "pool": pool,
    }
    # Validate eagerly so a bad option fails at decoration time, not at the first call.
    _validate_options(**options)
    options["verify"] = resolve_verify(verify)

    def decorate(target: Any) -> Any:
        if isinstance(target, torch.nn.Module):
            return GraphedModule(target, **options)
        step = Graphed(target, **options)
        functools.update_wrapper(step, target)
        return step

    if fn is None:
        return decorate
    return decorate(fn)
