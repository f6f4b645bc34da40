"""``graphguard certify``: certify a step for CUDA-graph capture (by default the DSA workload).

The step comes as a :class:`~graphguard._workload.Workload` (see that module): ``certify`` takes
one, or a name that :func:`~graphguard._workload.load_workload` resolves (a ``graphguard.workloads``
entry point such as ``dsa``, or ``module:function``). Four claims, each checked, never assumed:

1. semantics: the safe step gives the same outputs as its reference (the unsafe step, unless the
   workload names another) on every input case, edge cases and random draws alike;
2. refusal: under graphguard the unsafe step is refused with hazards at exactly the expected
   lines, in audit mode (any machine) and under real capture (GPU), where the process stays
   healthy afterwards; the safe step reports nothing;
3. replay (GPU only): the safe step is captured once and replayed across new input values (same
   shapes) with outputs equal to eager;
4. the certificate records device, torch version, input shapes and timings.

The result says plainly what was certified. ``CERTIFIED``: every claim ran and passed.
``PARTIAL``: none failed but some did not run (without a GPU, refusal under capture and replay;
a workload without an unsafe step cannot show a refusal), and the result line names them and why.
``NOT CERTIFIED``: a claim failed. The command exits 0 for CERTIFIED and PARTIAL, 1 for NOT
CERTIFIED and 2 when the arguments are wrong or the workload cannot be loaded; the JSON
certificate's ``certified`` is true only for CERTIFIED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from ._capture import capture
from ._errors import ConfigError, HazardError, ReplayMismatchError
from ._log import quiet_events
from ._tree import flatten, rebuild
from ._workload import (
    DEFAULT_WORKLOAD,
    Case,
    HazardSite,
    Workload,
    as_cases,
    load_workload,
    registered_workloads,
)

__all__ = ["CLAIMS", "Certificate", "Check", "certify", "main", "render"]

#: Every claim a certificate reports, in order.
CLAIMS = ("semantics", "refusal (audit)", "refusal (capture)", "replay")
NEEDS_GPU = "needs a CUDA GPU"
NO_UNSAFE_STEP = "the workload has no unsafe step"


@dataclass
class Check:
    """One claim's outcome: ``status`` is "passed", "failed" or "not run" (``detail`` says why)."""

    name: str
    status: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Certificate:
    """What ``certify`` found: the environment, one :class:`Check` per claim, and timings."""

    workload: str
    description: str
    device: str
    torch_version: str
    cuda: str | None
    python: str
    graphguard_version: str
    date: str
    shapes: dict[str, Any]
    checks: list[Check]
    timings_us: dict[str, float]

    def claims(self, status: str) -> list[str]:
        """Names of the claims with this status ("passed", "failed" or "not run")."""
        return [c.name for c in self.checks if c.status == status]

    @property
    def ok(self) -> bool:
        """No claim failed (the command exits 0); some may not have run."""
        return not self.claims("failed")

    @property
    def certified(self) -> bool:
        """Every claim ran and passed."""
        return all(c.status == "passed" for c in self.checks)

    @property
    def result(self) -> str:
        """``CERTIFIED``, ``PARTIAL`` (nothing failed, something not run) or ``NOT CERTIFIED``."""
        if not self.ok:
            return "NOT CERTIFIED"
        return "CERTIFIED" if self.certified else "PARTIAL"

    def summary(self) -> str:
        """The result line: the result, then which claims failed, were certified, did not run."""
        parts = []
        if self.claims("failed"):
            parts.append("failed: " + ", ".join(self.claims("failed")))
        if self.claims("passed"):
            parts.append("certified: " + ", ".join(self.claims("passed")))
        reasons: dict[str, list[str]] = {}
        for check in self.checks:
            if check.status == "not run":
                reasons.setdefault(check.detail, []).append(check.name)
        parts.extend(f"not run ({why}): {', '.join(names)}" for why, names in reasons.items())
        return f"{self.result} — {'; '.join(parts)}"

    def __str__(self) -> str:
        return render(self)

    def to_dict(self) -> dict[str, Any]:
        """The certificate as JSON-ready data, with the result and the claims by status."""
        data = asdict(self)
        data.update(
            result=self.result,
            summary=self.summary(),
            certified=self.certified,
            certified_claims=self.claims("passed"),
            failed_claims=self.claims("failed"),
            not_run_claims=self.claims("not run"),
        )
        return data


# --- helpers -------------------------------------------------------------------------------------
def _copy(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The case's arguments with every tensor cloned, so a step may work in place."""
    leaves, _, _ = flatten(args)
    cloned = (x.clone() if isinstance(x, torch.Tensor) else x for x in leaves)
    return tuple(rebuild(args, iter(cloned)))


def _describe(case: Case) -> dict[str, Any]:
    leaves, paths, _ = flatten(case.args, "args")
    shown = {}
    for path, leaf in zip(paths, leaves, strict=True):
        if isinstance(leaf, torch.Tensor):
            dtype = str(leaf.dtype).removeprefix("torch.")
            shown[path] = f"{dtype}{list(leaf.shape)}"
        elif leaf is not None:
            shown[path] = repr(leaf)[:40]
    return {"case": case.name, "args": shown}


def _first_case(workload: Workload, device: torch.device, quick: bool, seed: int) -> Case:
    made = workload.make_inputs(device, quick=quick, seed=seed)
    first = next(iter(as_cases(made, "make_inputs")), None)
    if first is None:
        raise ValueError("make_inputs gave no case")
    return first


def _sites(sites: Any) -> str:
    """``file:85 and :87`` for sites in one file; full locations otherwise."""
    ordered = sorted(set(sites))
    out, last_file = [], None
    for filename, lineno in ordered:
        out.append(f":{lineno}" if filename == last_file else f"{filename}:{lineno}")
        last_file = filename
    return " and ".join(out) if len(out) == 2 else ", ".join(out)


def _refusal_problems(hazards: list[Any], expected: list[HazardSite] | None) -> list[str]:
    """What is wrong with the hazards reported for the unsafe step; empty when all is right."""
    if not hazards:
        return ["the unsafe step was not refused: no hazard was reported"]
    if expected is None:
        return []
    got = {(h.filename, h.lineno) for h in hazards}
    want = {(s.filename, s.lineno) for s in expected}
    problems = []
    if got != want:
        problems.append(f"expected hazards at {_sites(want)}, got {_sites(got)}")
    for site in expected:
        kinds = {h.kind for h in hazards if (h.filename, h.lineno) == (site.filename, site.lineno)}
        if site.kind is not None and kinds and kinds != {site.kind}:
            problems.append(
                f"{site.filename}:{site.lineno} reported {', '.join(sorted(kinds))}, "
                f"not {site.kind}"
            )
    return problems


def _hazard_entries(hazards: list[Any]) -> list[str]:
    return [f"{h.code} {h.location}" for h in hazards]


def _graphguard_version() -> str:
    # graphguard/__init__.py imports this module; importing the package back would be a cycle.
    package = sys.modules.get(__package__ or "graphguard")
    return str(getattr(package, "__version__", "unknown"))


# --- claim 1: semantics --------------------------------------------------------------------------
def _check_semantics(workload: Workload, device: torch.device, quick: bool, seed: int) -> Check:
    pairs = []
    if workload.reference is not None:
        against = "reference step" if workload.reference_step is not None else "unsafe step"
        pairs.append(
            (
                f"step vs {against}",
                workload.safe_step,
                workload.reference,
                workload.make_inputs,
                workload.compare,
            )
        )
    pairs.extend(
        (p.name, p.safe, p.reference, p.make_inputs, p.compare) for p in workload.also_compare
    )
    if not pairs:
        return Check(
            "semantics", "not run", "no reference: the workload has no unsafe or reference step"
        )
    mismatches: list[str] = []
    counts: dict[str, int] = {}
    for label, safe, reference, make_inputs, compare in pairs:
        counts[label] = 0
        for case in as_cases(make_inputs(device, quick=quick, seed=seed), label):
            expected = reference(*_copy(case.args))
            actual = safe(*_copy(case.args))
            counts[label] += 1
            if not compare(actual, expected):
                mismatches.append(f"{label}: {case.name}")
        if counts[label] == 0:
            mismatches.append(f"{label}: no input case")
    n = sum(counts.values())
    data = {"inputs": n, "by_pair": counts}
    if mismatches:
        return Check("semantics", "failed", f"safe != reference on: {', '.join(mismatches)}", data)
    by_pair = ", ".join(f"{label} {k}" for label, k in counts.items())
    return Check("semantics", "passed", f"identical on {n} inputs ({by_pair})", data)


# --- claim 2: refusal ----------------------------------------------------------------------------
def _check_refusal_audit(workload: Workload, case: Case) -> Check:
    if workload.unsafe_step is None:
        return Check("refusal (audit)", "not run", NO_UNSAFE_STEP)
    expected = workload.hazard_sites()
    label = f"certify {workload.name}"
    unsafe_args, safe_args = _copy(case.args), _copy(case.args)
    with capture(mode="audit", on_hazard="warn", label=f"{label}: unsafe") as cap:
        workload.unsafe_step(*unsafe_args)
    with capture(mode="audit", on_hazard="warn", label=f"{label}: safe") as clean:
        workload.safe_step(*safe_args)
    data = {
        "hazards": _hazard_entries(cap.hazards),
        "safe_hazards": _hazard_entries(clean.hazards),
    }
    problems = _refusal_problems(cap.hazards, expected)
    if clean.hazards:
        problems.append(
            f"the safe step reported {len(clean.hazards)} hazard(s): "
            + ", ".join(data["safe_hazards"])
        )
    if problems:
        return Check("refusal (audit)", "failed", "; ".join(problems), data)
    kinds = ", ".join(sorted({h.kind for h in cap.hazards}))
    at = _sites({(h.filename, h.lineno) for h in cap.hazards})
    which = "exactly the expected lines" if expected is not None else "no lines were expected"
    return Check(
        "refusal (audit)",
        "passed",
        f"{kinds} at {at} ({which}); the safe step reports nothing",
        data,
    )


def _healthy() -> str | None:
    """None if ordinary CUDA work, RNG and a fresh capture work; else what failed."""
    try:
        torch.randn(8, device="cuda").sum().item()
        torch.rand(4, device="cuda")
        x = torch.ones(8, device="cuda")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = x * 2
        g.replay()
        torch.cuda.synchronize()
        if not torch.equal(y, x * 2):
            return "fresh capture replayed a wrong result"
    except Exception as e:  # the point is to report, not to crash
        return f"{type(e).__name__}: {e}"
    return None


def _check_refusal_capture(workload: Workload, case: Case) -> Check:
    if workload.unsafe_step is None:
        return Check("refusal (capture)", "not run", NO_UNSAFE_STEP)
    if not torch.cuda.is_available():
        return Check("refusal (capture)", "not run", NEEDS_GPU)
    expected = workload.hazard_sites()
    step, label = workload.unsafe_step, f"certify {workload.name}: unsafe"
    step(*_copy(case.args))  # warm-up, eagerly
    torch.cuda.synchronize()
    problems = []
    captured_args = _copy(case.args)
    try:
        with capture(label=label):
            step(*captured_args)
        problems.append("the unsafe step was captured without a report")
    except HazardError as e:
        first = expected[0] if expected else None
        if first is not None and (e.diagnostic.filename, e.diagnostic.lineno) != first[:2]:
            problems.append(
                f"the raise named {e.diagnostic.location}, not {first.filename}:{first.lineno}"
            )
    except Exception as e:  # torch's own capture error: graphguard missed the hazard
        problems.append(f"capture failed with {type(e).__name__} instead of a hazard: {e}")
    expected_out = step(*_copy(case.args))
    fallback_args = _copy(case.args)
    with capture(on_hazard="fallback", label=label) as cap:
        out = step(*fallback_args)
    torch.cuda.synchronize()
    problems.extend(f"with fallback: {p}" for p in _refusal_problems(cap.hazards, expected))
    if not workload.compare(out, expected_out):
        problems.append("the fallback result differs from eager")
    health = _healthy()
    if health:
        problems.append(f"process unhealthy afterwards: {health}")
    data = {"hazards": _hazard_entries(cap.hazards)}
    if problems:
        return Check("refusal (capture)", "failed", "; ".join(problems), data)
    return Check(
        "refusal (capture)",
        "passed",
        "raised at the first expected line under real capture; with fallback every expected "
        "line was named, the result equalled eager, and CUDA work, RNG and a new capture still ran",
        data,
    )


# --- claim 3: replay -----------------------------------------------------------------------------
def _time_us(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    times.sort()
    return times[len(times) // 2]


def _layout_mismatch(static: list[Any], new: list[Any], paths: list[str]) -> str | None:
    """Why ``new`` cannot be copied into the captured ``static`` leaves; None if it can."""
    for path, s, n in zip(paths, static, new, strict=True):
        if isinstance(s, torch.Tensor):
            if (n.shape, n.dtype, n.device) != (s.shape, s.dtype, s.device):
                return (
                    f"{path} is {n.dtype}{list(n.shape)} on {n.device}, captured with "
                    f"{s.dtype}{list(s.shape)} on {s.device}"
                )
        elif not (n is s or n == s):
            return f"{path} is {n!r}, captured with {s!r} (non-tensor arguments are baked in)"
    return None


def _check_replay(
    workload: Workload, quick: bool, seed: int, timings: dict[str, float], reps: int
) -> Check:
    if workload.replay_inputs is None:
        return Check("replay", "not run", "the workload has no replay inputs")
    if not torch.cuda.is_available():
        return Check("replay", "not run", NEEDS_GPU)
    device = torch.device("cuda")
    cases = iter(as_cases(workload.replay_inputs(device, quick=quick, seed=seed), "replay_inputs"))
    first = next(cases, None)
    if first is None:
        return Check("replay", "failed", "replay_inputs gave no case")
    step = workload.safe_step
    compare = workload.replay_compare or workload.compare
    static = first.args
    static_leaves, paths, signature = flatten(static, "args")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(*static)
    torch.cuda.current_stream().wait_stream(side)
    later = list(cases)
    # Every replay is verified (docs/verify.md): run eagerly from the same state, every output
    # and every tensor the step reaches must match the replay's, on top of ``compare`` below.
    with capture(label=f"certify {workload.name}: safe", verify=max(1, len(later))) as cap:
        out = step(*static)
    replayed, bad = [], []
    for case in later:
        leaves, _, case_signature = flatten(case.args, "args")
        mismatch = (
            "its arguments are nested differently from the captured ones"
            if case_signature != signature
            else _layout_mismatch(static_leaves, leaves, paths)
        )
        if mismatch:
            return Check("replay", "failed", f"replay case {case.name!r}: {mismatch}")
        for s, n in zip(static_leaves, leaves, strict=True):
            if isinstance(s, torch.Tensor):
                s.copy_(n)
        try:
            cap.replay(eager=lambda: step(*static), outputs=out)
        except ReplayMismatchError as err:
            replayed.append(case.name)
            bad.append(f"{case.name} (GG901: {err.diagnostic.message})")
            continue
        ref = step(*case.args)
        torch.cuda.synchronize()
        replayed.append(case.name)
        if not compare(out, ref):
            bad.append(case.name)
    timings["eager_safe_step"] = _time_us(lambda: step(*static), reps)
    timings["graph_replay"] = _time_us(cap.replay, reps)
    data = {"captured": _describe(first), "replays": replayed}
    if not replayed:
        return Check(
            "replay", "failed", "replay_inputs gave only the capture case; nothing replayed", data
        )
    if bad:
        return Check("replay", "failed", "replay differs from eager at " + ", ".join(bad), data)
    return Check(
        "replay",
        "passed",
        f"captured once at {first.name}; {len(replayed)} replays with new values "
        f"({', '.join(replayed)}) matched eager, each verified (GG901 found no difference)",
        data,
    )


# --- the whole certificate -----------------------------------------------------------------------
def _claim(name: str, run: Callable[[], Check]) -> Check:
    """Run one claim; an exception from the workload's code fails the claim, not certify."""
    try:
        return run()
    except Exception as e:
        return Check(name, "failed", f"raised {type(e).__name__}: {e}")


def certify(
    workload: Workload | str = DEFAULT_WORKLOAD,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Certificate:
    """Certify ``workload`` (a Workload, a registered name or ``module:function``) here.

    Runs every claim this machine can run and returns the :class:`Certificate`; a claim that
    fails (an exception from the workload's code included) is recorded, not raised. Raises
    ``ConfigError`` when a name cannot be resolved to a workload. The refusal claims provoke
    hazards on purpose: they are logged as ``graphguard.hazard`` events through your structlog
    configuration, like any other (the command line drops them).
    """
    if isinstance(workload, str):
        workload = load_workload(workload)
    elif not isinstance(workload, Workload):
        raise ConfigError(
            f"workload must be a graphguard.Workload or a name; got {type(workload).__name__}"
        )
    say = progress or (lambda _msg: None)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    timings: dict[str, float] = {}
    shapes: dict[str, Any] = {}
    t0 = time.perf_counter()
    say("1/3 semantics: the safe step against its reference")
    checks = [_claim("semantics", lambda: _check_semantics(workload, device, quick, seed))]
    say("2/3 refusal of the unsafe step under graphguard")
    try:
        case = _first_case(workload, device, quick, seed)
    except Exception as e:
        no_case = f"make_inputs raised {type(e).__name__}: {e}"
        for name in ("refusal (audit)", "refusal (capture)"):
            if workload.unsafe_step is None:
                checks.append(Check(name, "not run", NO_UNSAFE_STEP))
            else:
                checks.append(Check(name, "failed", no_case))
    else:
        shapes["audit"] = _describe(case)
        checks.append(_claim("refusal (audit)", lambda: _check_refusal_audit(workload, case)))
        checks.append(_claim("refusal (capture)", lambda: _check_refusal_capture(workload, case)))
    say("3/3 capture once, replay across new inputs" if cuda else "3/3 replay needs a GPU")
    reps = 20 if quick else 100
    replay = _claim("replay", lambda: _check_replay(workload, quick, seed, timings, reps))
    if "captured" in replay.data:
        shapes["replay"] = replay.data["captured"]
    checks.append(replay)
    timings["certify_wall"] = (time.perf_counter() - t0) * 1e6
    return Certificate(
        workload=workload.name,
        description=workload.description,
        device=torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        torch_version=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        graphguard_version=_graphguard_version(),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        shapes=shapes,
        checks=checks,
        timings_us={k: round(v, 1) for k, v in timings.items()},
    )


def _hazard_summary(cert: Certificate) -> list[str]:
    """Hazards the refusal claims provoked: by code (with the first occurrence) and by file."""
    seen = [h for c in cert.checks for h in c.data.get("hazards", [])]
    if not seen:
        return []
    by_code: dict[str, list[str]] = {}
    by_file: dict[str, int] = {}
    for entry in seen:
        code, location = entry.split(" ", 1)
        by_code.setdefault(code, []).append(location)
        file = location.rsplit(":", 1)[0]
        by_file[file] = by_file.get(file, 0) + 1
    codes = ", ".join(f"{c} x{len(v)} (first at {v[0]})" for c, v in sorted(by_code.items()))
    files = ", ".join(f"{f} x{n}" for f, n in sorted(by_file.items()))
    return [f"  hazards provoked, by code: {codes}", f"  hazards provoked, by file: {files}"]


def render(cert: Certificate) -> str:
    """The certificate as text, ending with the result line."""
    lines = [
        f"graphguard certificate: workload {cert.workload}",
        f"  step: {cert.description}",
        f"  device: {cert.device}   torch {cert.torch_version}   CUDA {cert.cuda or '-'}   "
        f"python {cert.python}   graphguard {cert.graphguard_version}   {cert.date}",
    ]
    for claim, shown in cert.shapes.items():
        args = ", ".join(f"{path} {what}" for path, what in shown["args"].items())
        lines.append(f"  inputs ({claim}): {shown['case']}: {args}")
    for check in cert.checks:
        mark = {"passed": "PASS", "failed": "FAIL", "not run": "SKIP"}[check.status]
        lines.append(f"  [{mark}] {check.name}: {check.detail}")
    if cert.timings_us:
        lines.append(
            "  timings (µs; step timings are medians): "
            + ", ".join(f"{k}={v}" for k, v in cert.timings_us.items())
        )
    lines.extend(_hazard_summary(cert))
    lines.append(f"  result: {cert.summary()}")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------
EXIT_CODES = """\
exit status:
  0  no claim failed: CERTIFIED (every claim ran and passed) or PARTIAL (the result line names
     the claims that did not run, and why)
  1  a claim failed: NOT CERTIFIED
  2  usage error, or the workload could not be found, imported or built
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage block is one ``--help`` away)."""

    def error(self, message: str) -> Any:  # argparse's signature returns NoReturn
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Let ``module:function`` name a module in the current directory, as ``python -m`` does."""
    cwd = os.getcwd()
    added = not ({"", cwd} & set(sys.path))
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="graphguard certify",
        description="Certify a step for CUDA-graph capture: semantics against its reference,\n"
        "refusal of its unsafe form, replay across new inputs (GPU). See docs/certify.md.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "workload",
        nargs="?",
        default=DEFAULT_WORKLOAD,
        metavar="WORKLOAD",
        help=f"a registered workload (default: {DEFAULT_WORKLOAD}; see --list) or "
        "MODULE:FUNCTION returning a graphguard.Workload",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable certificate")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: 0)")
    parser.add_argument("--list", action="store_true", help="list the registered workloads")
    args = parser.parse_args(argv)
    if args.list:
        for name, target in registered_workloads().items():
            print(f"{name}  {target}")
        return 0
    show = sys.stderr.isatty() and not args.json
    # A JSON certificate on stdout must stay parseable: the workload's own prints go to stderr.
    keep_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    # The refusal claims provoke hazards on purpose: their events are dropped, the report says it.
    with _cwd_importable(), keep_stdout, quiet_events():
        try:
            workload = load_workload(args.workload)
        except ConfigError as e:
            print(f"graphguard certify: {e}", file=sys.stderr)
            return 2
        cert = certify(
            workload,
            quick=args.quick,
            seed=args.seed,
            progress=(lambda m: print(f"... {m}", file=sys.stderr)) if show else None,
        )
    print(json.dumps(cert.to_dict(), indent=2) if args.json else render(cert))
    return 0 if cert.ok else 1
