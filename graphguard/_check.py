"""``graphguard check``: run a whole program with every guarded region audited, and collect hazards.

The program runs in this process, as ``python script.py`` or ``python -m module`` would run it
(``runpy``, ``sys.argv`` set, the script's folder first on ``sys.path``), with two process-wide
overrides from ``_state``: ``force_audit`` makes every ``capture``, ``guard`` and ``graphed``
region run in audit mode, and ``collect`` makes a hazard be recorded and the call go ahead instead
of raising. Calls that cannot run on a machine without CUDA are emulated where the library can,
so one run finds every hazard the program reaches, not just the first. Diagnostics arrive through
``_report.add_sink``; identical hazards (same code, file, line and API: a step called in a loop)
are folded into one finding with a count.

``--function`` audits functions the program never decorated. Their code is not touched: a profile
hook (``sys.setprofile`` and ``threading.setprofile`` for threads started later) enters a guard
when a matching function's frame starts and leaves it when the frame returns, raises or yields,
so generators, recursion and exceptions pair up on their own. Functions are matched by name when
they are called, which works for functions defined in the script itself (they do not exist before
it runs, so they cannot be wrapped in advance) and for imported ones alike. The hook replaces any
profiler the program installs itself (``cProfile``), and costs one Python call per function call
while the program runs, which is why it is on only when ``--function`` is given.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import re
import runpy
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from ._diagnostic import Diagnostic, TensorInfo, escape_controls
from ._frames import is_internal
from ._rank import env_rank_info
from ._report import add_sink, append_record, channel_sink
from ._session import guarded, new_state
from ._state import CHECK_CHANNEL_ENV, CHECK_PID_ENV, overrides

__all__ = [
    "EXIT_CLEAN",
    "EXIT_HAZARDS",
    "EXIT_PROGRAM_FAILED",
    "EXIT_USAGE",
    "CheckResult",
    "CheckStartError",
    "Finding",
    "FunctionSpec",
    "Target",
    "display_path",
    "render_jsonl",
    "render_text",
    "run_check",
    "summarize",
]

#: Exit statuses of ``graphguard check`` (documented in the CLI's help).
EXIT_CLEAN = 0
EXIT_HAZARDS = 1
EXIT_USAGE = 2
EXIT_PROGRAM_FAILED = 3


class CheckStartError(Exception):
    """The program could not be started: missing script, syntax error, unknown module."""


# --- what to run ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A script path or a module name, and the arguments the program receives."""

    script: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.script is None) == (self.module is None):
            raise ValueError("a Target is a script or a module, not both or neither")

    @property
    def display(self) -> str:
        return self.script if self.script is not None else f"-m {self.module}"

    def prepare(self) -> Callable[[], Any]:
        """Check the program can start and return the call that runs it.

        Everything that can fail before the program's own code runs fails here, as
        ``CheckStartError``, so that a typo is a usage error and not "the program raised".
        """
        return self._prepare_script() if self.script is not None else self._prepare_module()

    def _prepare_script(self) -> Callable[[], Any]:
        assert self.script is not None
        path = os.path.abspath(self.script)
        if not os.path.exists(path):
            raise CheckStartError(f"cannot open {self.script!r}: no such file or directory")
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "__main__.py")):
                raise CheckStartError(f"cannot run {self.script!r}: a folder without __main__.py")
        else:
            try:
                source = Path(path).read_bytes()
                compile(source, path, "exec", dont_inherit=True)
            except SyntaxError as e:
                raise CheckStartError(
                    f"cannot run {self.script!r}: {e.filename}:{e.lineno}: SyntaxError: {e.msg}"
                ) from None
            except (OSError, ValueError) as e:
                raise CheckStartError(f"cannot run {self.script!r}: {e}") from None
        folder = path if os.path.isdir(path) else os.path.dirname(path)

        def run() -> Any:
            sys.path.insert(0, folder)
            sys.argv = [self.script or path, *self.args]
            return runpy.run_path(path, run_name="__main__")

        return run

    def _prepare_module(self) -> Callable[[], Any]:
        name = self.module
        assert name is not None
        # ``python -m`` puts the current directory first; a console script's sys.path[0] is
        # its bin folder, so add it here before looking the module up.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations is not None:
                main_spec = importlib.util.find_spec(f"{name}.__main__")
                if main_spec is None:
                    raise CheckStartError(
                        f"cannot run module {name!r}: it is a package without a __main__ module"
                    )
                spec = main_spec
            if spec is None:
                raise CheckStartError(f"cannot run module {name!r}: no module named {name!r}")
            get_code = getattr(spec.loader, "get_code", None)
            if get_code is not None:
                get_code(spec.name)
        except CheckStartError:
            raise
        except SyntaxError as e:
            raise CheckStartError(
                f"cannot run module {name!r}: {e.filename}:{e.lineno}: SyntaxError: {e.msg}"
            ) from None
        except Exception as e:  # a parent package failed to import, a malformed name
            raise CheckStartError(
                f"cannot run module {name!r}: {type(e).__name__}: {_first_line(e)}"
            ) from None

        def run() -> Any:
            sys.argv = [name, *self.args]
            return runpy.run_module(name, run_name="__main__", alter_sys=True)

        return run


# --- --function -----------------------------------------------------------------------------------
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC = re.compile(rf"^(?:(?P<module>{_IDENT}(?:\.{_IDENT})*):)?(?P<qualname>.+)$")
_QUAL_PART = re.compile(rf"^(?:{_IDENT}|<locals>)$")


@dataclass(frozen=True)
class FunctionSpec:
    """``--function`` syntax: ``QUALNAME`` or ``MODULE:QUALNAME``.

    ``QUALNAME`` is the function's ``__qualname__`` (``train_step``, ``Trainer.step``,
    ``make_step.<locals>.step``), matched exactly; ``MODULE`` is the module's ``__name__``, which
    is ``__main__`` for the checked script itself. Without a module, the name matches in any module.
    """

    text: str
    qualname: str
    module: str | None = None

    @classmethod
    def parse(cls, text: str) -> FunctionSpec:
        match = _SPEC.match(text.strip())
        qualname = match.group("qualname") if match else ""
        parts = qualname.split(".")
        if match is None or not all(_QUAL_PART.match(p) for p in parts) or parts[-1] == "<locals>":
            raise ValueError(
                f"--function {text!r} is not valid; use QUALNAME or MODULE:QUALNAME, "
                f"for example 'train_step', 'Trainer.step' or 'pkg.train:train_step'"
            )
        return cls(text=text, qualname=qualname, module=match.group("module"))

    @property
    def name(self) -> str:
        """The function's own name, the last part of the qualified name (a cheap first filter)."""
        return self.qualname.rsplit(".", 1)[-1]

    def matches(self, module: str | None, qualname: str) -> bool:
        return qualname == self.qualname and (self.module is None or self.module == module)


def _qualname_of(code: CodeType, cache: dict[CodeType, str]) -> str:
    qualname = getattr(code, "co_qualname", None)  # Python 3.11+
    if qualname is not None:
        return str(qualname)
    found = cache.get(code)
    if found is None:
        # Python 3.10 code objects do not know their qualified name; their function does.
        found = next(
            (
                f.__qualname__
                for f in gc.get_referrers(code)
                if getattr(f, "__code__", None) is code and hasattr(f, "__qualname__")
            ),
            code.co_name,
        )
        cache[code] = found
    return found


class FunctionAuditor:
    """Guards every call of the named functions, through a profile hook (see the module notes)."""

    def __init__(self, specs: Sequence[FunctionSpec]) -> None:
        self.specs = tuple(specs)
        self.matched: set[str] = set()
        self.failures: list[str] = []
        self._names = frozenset(spec.name for spec in self.specs)
        self._local = threading.local()
        self._qualnames: dict[CodeType, str] = {}
        self._previous: tuple[Any, Any] | None = None

    def install(self) -> None:
        self._previous = (sys.getprofile(), _thread_profile())
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)

    def uninstall(self) -> None:
        sys.setprofile(None)
        if self._previous is None:
            return
        previous_sys, previous_threads = self._previous
        self._previous = None
        # Guards still open in this thread (the program's profile hook was replaced, or it
        # exited from inside a guarded function without unwinding) are closed innermost first.
        stack: list[tuple[FrameType, Any]] = getattr(self._local, "stack", [])
        while stack:
            self._leave(stack.pop()[1])
        threading.setprofile(previous_threads)
        sys.setprofile(previous_sys)

    # The profile hook runs for every call and return in the program: keep the common path short.
    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            if frame.f_code.co_name in self._names:
                self._enter(frame)
        elif event == "return":
            stack = getattr(self._local, "stack", None)
            if stack and stack[-1][0] is frame:
                self._leave(stack.pop()[1])

    def _enter(self, frame: FrameType) -> None:
        try:
            module = frame.f_globals.get("__name__")
            qualname = _qualname_of(frame.f_code, self._qualnames)
            spec = next((s for s in self.specs if s.matches(module, qualname)), None)
            if spec is None:
                return
            self.matched.add(spec.text)
            session = guarded(new_state(on_hazard="warn", label=f"{module}:{qualname}"))
            session.__enter__()
        except Exception as e:  # never break the program being checked
            self._fail(e)
            return
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append((frame, session))

    def _leave(self, session: Any) -> None:
        try:
            session.__exit__(None, None, None)
        except Exception as e:
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        if len(self.failures) < 5:
            self.failures.append(f"{type(error).__name__}: {_first_line(error)}")


def _thread_profile() -> Any:
    getter = getattr(threading, "getprofile", None)  # Python 3.12+
    if getter is not None:
        return getter()
    return getattr(threading, "_profile_hook", None)


# --- collecting -----------------------------------------------------------------------------------
@dataclass
class Finding:
    """One distinct hazard and how many times the program hit it."""

    diagnostic: Diagnostic
    count: int = 1


class _Collector:
    """A ``_report`` sink folding identical hazards together; called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._findings: dict[tuple[str, str, int, str], Finding] = {}

    def __call__(self, diagnostic: Diagnostic) -> None:
        key = (diagnostic.code, diagnostic.filename, diagnostic.lineno, diagnostic.api)
        with self._lock:
            finding = self._findings.get(key)
            if finding is None:
                self._findings[key] = Finding(diagnostic)
            else:
                finding.count += 1

    def findings(self) -> list[Finding]:
        with self._lock:
            return list(self._findings.values())


@dataclass
class CheckResult:
    """What one ``graphguard check`` run found, and how the program ended."""

    target: Target
    findings: list[Finding] = field(default_factory=list)
    #: ``"ExcType: first line of the message"`` when the program raised; ``None`` if it completed.
    error: str | None = None
    #: The program's traceback without graphguard's and runpy's frames (shown with --verbose).
    error_traceback: str | None = None
    #: ``--function`` specs that matched no call (probably a typo).
    unmatched_functions: list[str] = field(default_factory=list)
    #: Problems of the ``--function`` profile hook itself; the program kept running.
    hook_failures: list[str] = field(default_factory=list)

    @property
    def occurrences(self) -> int:
        return sum(f.count for f in self.findings)

    @property
    def exit_status(self) -> int:
        if self.findings:
            return EXIT_HAZARDS
        return EXIT_PROGRAM_FAILED if self.error is not None else EXIT_CLEAN


def run_check(
    target: Target, *, functions: Sequence[FunctionSpec] = (), supervise: bool = True
) -> CheckResult:
    """Run ``target`` with every region audited and every hazard collected.

    Raises ``CheckStartError`` if the program cannot start. Whatever the program does (returns,
    raises, calls ``sys.exit``), the overrides, ``sys.argv``, ``sys.path`` and any profile hook
    are restored before this returns.

    ``supervise`` (where ``os.fork`` exists): the program runs in a forked child while this
    process waits. Every hazard reaches the channel file the moment it is reported, and the
    child's last record says how the program ended, so a program that leaves with
    ``os._exit()`` or dies of a signal still gets its report (its exit status in place of an
    exception). Without ``fork`` (or ``supervise=False``) the program runs in this process.
    """
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    saved_overrides = (overrides.force_audit, overrides.collect)
    saved_env = {name: os.environ.get(name) for name in (CHECK_CHANNEL_ENV, CHECK_PID_ENV)}
    result = CheckResult(target)
    collector = _Collector()
    auditor = FunctionAuditor(functions) if functions else None
    me = os.getpid()
    fd, channel = tempfile.mkstemp(prefix="graphguard-check-", suffix=".jsonl")
    os.close(fd)
    try:
        run = target.prepare()
        # Child processes of the program (fork, spawn, subprocess running Python) inherit these
        # and append their hazards to the channel; this process collects its own in memory.
        os.environ[CHECK_CHANNEL_ENV] = channel
        os.environ[CHECK_PID_ENV] = str(me)
        remove_sink = add_sink(collector)
        remove_channel = add_sink(channel_sink)
        overrides.force_audit = overrides.collect = True
        try:
            supervise = supervise and hasattr(os, "fork") and _stdio_has_descriptors()
            if supervise:
                _supervised(run, result, auditor, channel)
            else:
                _run_program(run, result, auditor, me)
        finally:
            remove_channel()
            remove_sink()
    finally:
        overrides.force_audit, overrides.collect = saved_overrides
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for diagnostic in _read_channel(channel)[0]:
            collector(diagnostic)
        with contextlib.suppress(OSError):
            os.unlink(channel)
    result.findings = collector.findings()
    if auditor is not None and not supervise:
        result.unmatched_functions = [
            spec.text for spec in auditor.specs if spec.text not in auditor.matched
        ]
        result.hook_failures = auditor.failures
    return result


def _run_program(run: Callable[[], Any], result: CheckResult, auditor: Any, me: int) -> None:
    """Run the program here, recording how it ended in ``result``."""
    try:
        if auditor is not None:
            auditor.install()
        try:
            run()
        finally:
            if auditor is not None:
                auditor.uninstall()
    except SystemExit as e:
        if e.code not in (None, 0):
            result.error = f"SystemExit: {e.code}"
    except BaseException as e:  # whatever the program raised, even a custom BaseException
        message = _first_line(e)
        result.error = f"{type(e).__name__}: {message}" if message else type(e).__name__
        result.error_traceback = _user_traceback(e)
    finally:
        if os.getpid() != me:
            # A child the program forked with os.fork() returned from the program instead of
            # exiting: its hazards are in the channel; it must not report a second time.
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(0 if result.error is None else 1)


def _supervised(run: Callable[[], Any], result: CheckResult, auditor: Any, channel: str) -> None:
    """Run the program in a forked child; this process waits and reads how it ended."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the program's process (coverage does not follow forks)
        code = 0
        try:
            # CHECK_PID_ENV names the checking process, so this one's hazards go to the
            # channel like those of its own children.
            _run_program(run, result, auditor, os.getpid())
            record = {
                "error": result.error,
                "error_traceback": result.error_traceback,
                "unmatched_functions": [
                    s.text for s in auditor.specs if s.text not in auditor.matched
                ]
                if auditor is not None
                else [],
                "hook_failures": auditor.failures if auditor is not None else [],
            }
            append_record(channel, {"end": record})
        except BaseException:
            code = 70
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    end = _read_channel(channel)[1]
    if end is not None:
        result.error = end.get("error")
        result.error_traceback = end.get("error_traceback")
        result.unmatched_functions = list(end.get("unmatched_functions") or [])
        result.hook_failures = list(end.get("hook_failures") or [])
        return
    # The program's process ended without reaching the end of the program: os._exit or a signal.
    if os.WIFSIGNALED(status):
        result.error = f"killed by signal {os.WTERMSIG(status)}"
    elif os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        result.error = f"os._exit({os.WEXITSTATUS(status)})"


def _stdio_has_descriptors() -> bool:
    """Whether ``sys.stdout``/``sys.stderr`` write to file descriptors a forked child shares.

    In-memory streams (``io.StringIO``, a test's capture) would keep the child's output in the
    child: then the program runs in this process instead.
    """
    try:
        sys.stdout.fileno()
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _read_channel(path: str) -> tuple[list[Diagnostic], dict[str, Any] | None]:
    """The hazards processes appended to the channel, and the program's end record if one was
    written (a supervised program that returned); a torn last line is skipped."""
    found, end = [], None
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return [], None
    for line in lines:
        try:
            record = json.loads(line)
            if "diagnostic" in record:
                found.append(_diagnostic_from_dict(record["diagnostic"]))
            elif isinstance(record.get("end"), dict):
                end = dict(record["end"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found, end


def _diagnostic_from_dict(data: dict[str, Any]) -> Diagnostic:
    data = dict(data)
    shape = data.pop("tensor_shape", None)
    dtype = data.pop("tensor_dtype", None)
    device = data.pop("tensor_device", None)
    tensor = (
        TensorInfo(shape=tuple(shape), dtype=dtype, device=device) if shape is not None else None
    )
    data["details"] = tuple((str(k), str(v)) for k, v in data.get("details", {}).items())
    return Diagnostic(tensor=tensor, **data)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _user_traceback(error: BaseException) -> str:
    """The program's traceback with graphguard's and runpy's own frames left out."""
    info = traceback.TracebackException.from_exception(error)
    kept = [frame for frame in info.stack if not is_internal(frame.filename)]
    info.stack = traceback.StackSummary.from_list(kept)
    return "".join(info.format())


# --- reporting ------------------------------------------------------------------------------------
def display_path(filename: str, project_root: str | os.PathLike[str]) -> str:
    """``filename`` relative to the project root when it lies inside it, else as it is."""
    if filename.startswith("<"):
        return filename
    path = os.path.abspath(filename)
    root = os.path.abspath(project_root)
    try:
        relative = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith(os.pardir) else relative


def summarize(result: CheckResult, project_root: str | os.PathLike[str]) -> dict[str, Any]:
    """The run summary: totals, hazards by code (with the first location) and by file."""
    by_code: dict[str, dict[str, Any]] = {}
    by_file: dict[str, dict[str, int]] = {}
    for finding in result.findings:
        d = finding.diagnostic
        where = f"{display_path(d.filename, project_root)}:{d.lineno}"
        code = by_code.setdefault(
            d.code,
            {"kind": d.kind, "title": d.title, "hazards": 0, "occurrences": 0, "first": where},
        )
        code["hazards"] += 1
        code["occurrences"] += finding.count
        file = by_file.setdefault(
            display_path(d.filename, project_root), {"hazards": 0, "occurrences": 0}
        )
        file["hazards"] += 1
        file["occurrences"] += finding.count
    ranks = env_rank_info()
    rank = (
        {} if ranks is None else {"rank": ranks[0], "local_rank": ranks[1], "world_size": ranks[2]}
    )
    return {
        **rank,
        "target": result.target.display,
        "hazards": len(result.findings),
        "occurrences": result.occurrences,
        "files": len(by_file),
        "by_code": dict(sorted(by_code.items())),
        "by_file": by_file,
        "completed": result.error is None,
        "error": result.error,
        "unmatched_functions": result.unmatched_functions,
        "exit_status": result.exit_status,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts(entry: dict[str, Any]) -> str:
    return f"{_plural(entry['hazards'], 'hazard')} ({_plural(entry['occurrences'], 'occurrence')})"


def render_text(result: CheckResult, project_root: str | os.PathLike[str]) -> str:
    """Every diagnostic as the library renders it, then the run summary (control characters
    from paths and messages escaped)."""
    e = escape_controls
    blocks = []
    for finding in result.findings:
        text = str(finding.diagnostic)
        if finding.count > 1:
            gutter = " " * len(str(finding.diagnostic.lineno))
            text += f"\n{gutter} = seen: {finding.count} times"
        blocks.append(text)
    summary = summarize(result, project_root)
    head = "graphguard check"
    if "rank" in summary:  # under torchrun: each rank writes its own report
        head += f" (rank {summary['rank']} of {summary['world_size']})"
    if not result.findings:
        lines = [f"{head}: {e(summary['target'])}: no hazards found"]
    else:
        lines = [
            f"{head}: {e(summary['target'])}: {_plural(summary['hazards'], 'hazard')} "
            f"({_plural(summary['occurrences'], 'occurrence')}) in "
            f"{_plural(summary['files'], 'file')}",
            "  by code:",
        ]
        for code, c in summary["by_code"].items():
            lines.append(f"    {code} {c['kind']:<17} {_counts(c)}, first at {e(c['first'])}")
        lines.append("  by file:")
        for path, f in summary["by_file"].items():
            lines.append(f"    {e(path)}: {_counts(f)}")
    if result.error is not None:
        lines.append(
            f"  the program stopped early ({e(result.error)}): code after that point was not "
            "checked"
        )
    blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_jsonl(result: CheckResult, project_root: str | os.PathLike[str]) -> str:
    """One JSON object per distinct hazard (``Diagnostic.to_dict()`` plus ``occurrences``), then
    one ``{"summary": {...}}`` object."""
    lines = [
        json.dumps({**f.diagnostic.to_dict(), "occurrences": f.count}, sort_keys=True)
        for f in result.findings
    ]
    lines.append(json.dumps({"summary": summarize(result, project_root)}, sort_keys=True))
    return "\n".join(lines) + "\n"
