"""The ``graphguard`` command line: ``rules``, ``check``, ``doctor`` and ``certify``.

The CLI is an application, so unlike the library it configures structlog, for its own process and
only while ``main()`` runs: graphguard's events are dropped (or, with ``check --verbose``, written
to stderr from WARNING up) so that they never mix with a report on stdout; every other event goes
through structlog's configuration unchanged, so a checked program's own logging still works. The
previous configuration is restored when ``main()`` returns, which keeps in-process callers (tests)
unaffected.

Every failure the user can cause (a bad argument, a missing script, a program that raises) is one
line on stderr and an exit status, never a graphguard traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from . import __version__
from ._check import (
    EXIT_USAGE,
    CheckStartError,
    FunctionSpec,
    Target,
    render_jsonl,
    render_text,
    run_check,
)
from ._docs import render_rule, write_rule_docs
from ._log import quiet_events
from ._rank import env_rank_info
from ._rules import KINDS, RULES, Rule, get_rule, iter_rules
from ._sarif import build_sarif

__all__ = ["build_parser", "main"]

CHECK_EXIT_CODES = """\
exit status:
  0  the program ran to the end and no hazard was found
  1  hazards were found (whether or not the program ran to the end)
  2  usage error, or the program could not start (missing script, syntax error, unknown module)
  3  the program raised or exited with a non-zero status, and no hazard was found before that
"""

# Options of ``check`` that take a value: needed to find where ``-m MODULE`` starts (see below).
_CHECK_VALUE_OPTIONS = frozenset({"--format", "-o", "--output", "--project-root", "--function"})


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped descriptions and epilogs as written."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage block is one ``--help`` away)."""

    def error(self, message: str) -> Any:  # argparse's signature returns NoReturn
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graphguard",
        description="Safe CUDA-graph capture for PyTorch: the hazard catalog, whole-program "
        "checks and an environment report.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"graphguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rules = sub.add_parser(
        "rules",
        help="list the hazard rules, or show one rule's page",
        description="List the hazard catalog, show one rule's page, or regenerate the pages.",
        formatter_class=_Formatter,
    )
    rules.add_argument(
        "code", nargs="?", help="a rule code (GG101) for its page, or a kind (host-sync) to filter"
    )
    rules.add_argument("--format", choices=("text", "json"), default="text")
    rules.add_argument(
        "--write-docs", metavar="DIR", help="write every rule page and the index into DIR"
    )

    check = sub.add_parser(
        "check",
        usage="graphguard check [options] (script.py | -m MODULE) [args ...]",
        help="run a program with every guarded region audited and report all hazards",
        description=(
            "Run a Python program as `python script.py` / `python -m module` would, with every\n"
            "graphguard.capture(), @guard and @graphed region in audit mode, collecting every\n"
            "hazard instead of stopping at the first. Calls that cannot run without CUDA are\n"
            "emulated where graphguard can.\n\n"
            "graphguard options go before the script or -m MODULE; everything after it is\n"
            "passed to the program."
        ),
        epilog=CHECK_EXIT_CODES
        + "\n--function matches a function's __qualname__ (train_step, Trainer.step), in any\n"
        "module, or in one module with MODULE:QUALNAME (the script itself is __main__). Every\n"
        "call of a matching function is audited, decorated or not. It works through a profile\n"
        "hook (sys.setprofile), which slows every call while the program runs and replaces a\n"
        "profiler the program installs itself.",
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    check.add_argument(
        "--format",
        choices=("text", "jsonl", "sarif"),
        default="text",
        help="report format (default: text)",
    )
    check.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")
    check.add_argument(
        "--project-root",
        metavar="DIR",
        help="paths in the report are relative to DIR (default: the current directory)",
    )
    check.add_argument(
        "--function",
        action="append",
        default=[],
        metavar="[MODULE:]QUALNAME",
        help="also audit every call of this function (repeatable)",
    )
    check.add_argument(
        "-v", "--verbose", action="store_true", help="log hazards to stderr as they happen"
    )
    check.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m")
    check.add_argument(
        "program", nargs=argparse.REMAINDER, metavar="script.py [args ...]", help=argparse.SUPPRESS
    )

    doctor = sub.add_parser(
        "doctor",
        help="report torch, CUDA, capture support and logging setup",
        description="Report what graphguard sees: torch and CUDA, whether a CUDA graph can be "
        "captured and replayed here, torch features graphguard uses, and logging setup.",
    )
    doctor.add_argument("--format", choices=("text", "json"), default="text")

    sub.add_parser(
        "certify",
        help="run the certification suite (graphguard certify --help)",
        add_help=False,
    )
    return parser


# --- entry point ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``graphguard`` command line; returns the exit status (it never calls sys.exit)."""
    args = list(sys.argv[1:] if argv is None else argv)
    structlog_was_configured = structlog.is_configured()
    try:
        if args and args[0] == "certify":
            # certify has its own parser: hand it every argument untouched (--help included).
            # It keeps graphguard's events quiet itself, around the hazards it provokes.
            return _cmd_certify(args[1:])
        try:
            ns = _parse(args)
        except SystemExit as e:  # --help, --version, or a usage error already printed
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        with quiet_events(verbose=bool(getattr(ns, "verbose", False))):
            return _run(ns, structlog_was_configured)
    except BrokenPipeError:
        # `graphguard rules | head`: the reader left; say nothing more and stop quietly.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process is ending
        return 1


def _parse(args: list[str]) -> argparse.Namespace:
    parser = build_parser()
    module_args: list[str] | None = None
    if args and args[0] == "check":
        head, module_args = _split_module_args(args[1:])
        args = ["check", *head]
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help(sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if ns.command == "check" and module_args is not None:
        ns.program = module_args
    return ns


def _run(ns: argparse.Namespace, structlog_was_configured: bool) -> int:
    if ns.command == "rules":
        return _cmd_rules(ns)
    if ns.command == "check":
        return _cmd_check(ns)
    if ns.command == "doctor":
        return _cmd_doctor(ns, structlog_was_configured)
    raise AssertionError(f"unhandled command {ns.command!r}")  # pragma: no cover


def _split_module_args(args: list[str]) -> tuple[list[str], list[str] | None]:
    """Split ``check`` arguments at ``-m MODULE``: what follows it belongs to the program.

    argparse would read ``-m mod --lr 0.1`` as an unknown ``--lr`` option of ``check``; ``python
    -m`` stops reading its own options at the module name, and so does this. A script path is
    handled by argparse itself (``REMAINDER`` starts at the first positional).
    """
    i = 0
    while i < len(args):
        token = args[i]
        if token == "-m":
            return args[: i + 2], args[i + 2 :]
        if token.startswith("-m") and not token.startswith("--"):  # -mpackage.module
            return args[: i + 1], args[i + 1 :]
        if token == "--" or not token.startswith("-"):
            break
        i += 2 if token in _CHECK_VALUE_OPTIONS else 1
    return args, None


def _error(command: str, message: str) -> int:
    print(f"graphguard {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _write(text: str, output: str | None = None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)


# --- rules ----------------------------------------------------------------------------------------
def _rule_dict(rule: Rule) -> dict[str, str]:
    return {
        "code": rule.code,
        "kind": rule.kind,
        "slug": rule.slug,
        "title": rule.title,
        "why": rule.why,
        "fix": rule.fix,
        "docs": rule.docs_link,
    }


def _cmd_rules(ns: argparse.Namespace) -> int:
    if ns.write_docs is not None:
        if ns.code is not None:
            return _error("rules", "--write-docs writes every rule; give no rule code with it")
        try:
            written = write_rule_docs(ns.write_docs)
        except OSError as e:
            return _error("rules", f"cannot write to {ns.write_docs!r}: {e.strerror or e}")
        print(f"wrote {len(written)} files to {ns.write_docs}")
        return 0
    if ns.code is None or ns.code in KINDS:
        rules = list(iter_rules(ns.code))
        if ns.format == "json":
            _write(json.dumps([_rule_dict(r) for r in rules], indent=2) + "\n")
            return 0
        kind_w = max(len(r.kind) for r in rules)
        slug_w = max(len(r.slug) for r in rules)
        lines = [f"{r.code}  {r.kind:<{kind_w}}  {r.slug:<{slug_w}}  {r.title}" for r in rules]
        lines.append("")
        lines.append("`graphguard rules CODE` shows a rule's page.")
        _write("\n".join(lines) + "\n")
        return 0
    try:
        rule = get_rule(ns.code)
    except KeyError:
        return _error(
            "rules",
            f"unknown rule {ns.code!r}; codes: {', '.join(RULES)}; kinds: {', '.join(KINDS)}",
        )
    if ns.format == "json":
        _write(json.dumps(_rule_dict(rule), indent=2) + "\n")
    else:
        _write(render_rule(rule))
    return 0


# --- check ----------------------------------------------------------------------------------------
def _cmd_check(ns: argparse.Namespace) -> int:
    program = list(ns.program)
    if program and program[0] == "--":
        program = program[1:]
    if ns.module is not None:
        target = Target(module=ns.module, args=tuple(program))
    elif program:
        target = Target(script=program[0], args=tuple(program[1:]))
    else:
        return _error("check", "give a script to run, or -m MODULE")
    try:
        specs = [FunctionSpec.parse(text) for text in ns.function]
    except ValueError as e:
        return _error("check", str(e))
    root = os.path.abspath(ns.project_root if ns.project_root is not None else os.getcwd())
    if not os.path.isdir(root):
        return _error("check", f"--project-root {ns.project_root!r} is not a folder")
    if ns.output is not None:
        ranks = env_rank_info()
        if ranks is not None and "{rank}" not in ns.output:
            return _error(
                "check",
                f"-o {ns.output!r}: this is rank {ranks[0]} of {ranks[2]} (torchrun); put "
                "{rank} in the file name so that each rank writes its own report "
                "(docs/distributed.md)",
            )
        if ranks is not None:
            ns.output = ns.output.replace("{rank}", str(ranks[0]))
        folder = os.path.dirname(os.path.abspath(ns.output))
        if not os.path.isdir(folder):
            return _error("check", f"cannot write {ns.output!r}: {folder!r} is not a folder")

    progress = ns.format == "text" and _isatty(sys.stderr)
    if progress:
        print(f"graphguard check: running {target.display} ...", file=sys.stderr, flush=True)
    # A machine-readable report on stdout must stay parseable: the program's own prints go to
    # stderr instead while it runs.
    keep_stdout_clean = ns.format != "text" and ns.output is None
    try:
        with _stdout_to_stderr() if keep_stdout_clean else contextlib.nullcontext():
            result = run_check(target, functions=specs)
    except CheckStartError as e:
        return _error("check", str(e))

    if ns.format == "sarif":
        sarif = build_sarif(
            ((f.diagnostic, f.count) for f in result.findings),
            project_root=root,
            version=__version__,
            program_error=(
                None if result.error is None else f"{target.display} raised {result.error}"
            ),
        )
        report = json.dumps(sarif, indent=2) + "\n"
    elif ns.format == "jsonl":
        report = render_jsonl(result, root)
    else:
        report = render_text(result, root)
    try:
        _write(report, ns.output)
    except OSError as e:
        return _error("check", f"cannot write {ns.output!r}: {e.strerror or e}")

    if result.error is not None:
        print(f"graphguard check: {target.display} raised {result.error}", file=sys.stderr)
        if ns.verbose and result.error_traceback:
            print(result.error_traceback, file=sys.stderr, end="")
    for text in result.unmatched_functions:
        print(f"graphguard check: --function {text} matched no call", file=sys.stderr)
    for failure in result.hook_failures:
        print(f"graphguard check: --function hook failed: {failure}", file=sys.stderr)
    if progress:
        n = len(result.findings)
        found = "no hazards" if n == 0 else f"{n} hazard{'s' if n != 1 else ''}"
        print(f"graphguard check: {found} in {target.display}", file=sys.stderr)
    return result.exit_status


@contextlib.contextmanager
def _stdout_to_stderr() -> Any:
    """While the program runs, its stdout goes to stderr: ``print`` and ``os.write(1, ...)`` alike.

    File descriptor 1 itself is pointed at stderr (children inherit that), so the report written
    on stdout afterwards is the only thing there.
    """
    with contextlib.redirect_stdout(sys.stderr):
        try:
            sys.__stdout__.flush() if sys.__stdout__ is not None else None
            saved = os.dup(1)
            os.dup2(2, 1)
        except (OSError, ValueError):  # no real descriptors (an embedded interpreter)
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- doctor ---------------------------------------------------------------------------------------
def _has_parameter(func: Any, name: str) -> bool | None:
    """Whether ``func`` accepts ``name``; ``None`` when its signature cannot be read."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None


def _features() -> dict[str, bool | None]:
    import torch

    cuda_graph = getattr(torch.cuda, "CUDAGraph", None)
    try:  # torch.optim does not expose its ``optimizer`` submodule as an attribute
        optimizer: Any = importlib.import_module("torch.optim.optimizer")
    except ImportError:
        optimizer = None
    overrides = getattr(torch, "overrides", None)
    return {
        "capture_error_mode": (
            _has_parameter(cuda_graph.capture_begin, "capture_error_mode") if cuda_graph else False
        ),
        "check_input_liveness": _has_parameter(torch.cuda.graph, "check_input_liveness"),
        "nonzero_static": hasattr(torch, "nonzero_static"),
        "optimizer_step_pre_hook": hasattr(optimizer, "register_optimizer_step_pre_hook"),
        "torch_function_mode": hasattr(overrides, "TorchFunctionMode"),
    }


_FEATURE_LABELS = {
    "capture_error_mode": "CUDAGraph.capture_begin(capture_error_mode=)",
    "check_input_liveness": "torch.cuda.graph(check_input_liveness=)",
    "nonzero_static": "torch.nonzero_static",
    "optimizer_step_pre_hook": "torch.optim.optimizer.register_optimizer_step_pre_hook",
    "torch_function_mode": "torch.overrides.TorchFunctionMode",
}


def _cuda_graph_smoke_test() -> str:
    """Capture ``y = x + 1`` into a CUDA graph and replay it with a new ``x``."""
    import torch

    try:
        x = torch.zeros(4, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up outside the capture, as torch recommends
            y = x + 1
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = x + 1
        x.fill_(2.0)
        graph.replay()
        torch.cuda.synchronize()
        if y.tolist() != [3.0] * 4:
            return f"failed: replay produced {y.tolist()}, expected [3.0, 3.0, 3.0, 3.0]"
        return "ok"
    except Exception as e:
        return f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"


def _self_test() -> str:
    """Whether graphguard intercepts a hazard here (``.item()`` in an audit region)."""
    import torch

    from ._capture import capture
    from ._errors import HazardError

    x = torch.ones(2)
    try:
        with capture(mode="audit", label="graphguard doctor"):
            x.sum().item()
    except HazardError as e:
        return "ok" if e.code == "GG101" else f"failed: reported {e.code}, expected GG101"
    except Exception as e:
        return f"failed: {type(e).__name__}: {e}"
    return "failed: .item() in an audit region was not reported"


def _logging_info(structlog_was_configured: bool) -> dict[str, Any]:
    from ._log import ENV_VAR

    value = os.environ.get(ENV_VAR)
    stripped = (value or "").strip()
    if not stripped:
        json_logs = "off"
    elif stripped == "json":
        json_logs = "on (stderr)"
    elif stripped.startswith("json:"):
        json_logs = f"on ({stripped[len('json:') :]})"
    else:
        json_logs = "invalid value (allowed: 'json', 'json:<path>')"
    return {
        "structlog_version": getattr(structlog, "__version__", None) or _dist_version("structlog"),
        "structlog_configured": structlog_was_configured,
        ENV_VAR: value,
        "json_logs": json_logs,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _doctor_info(structlog_was_configured: bool) -> dict[str, Any]:
    import torch

    cuda_available = bool(torch.cuda.is_available())
    devices = []
    if cuda_available:
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            devices.append(
                {
                    "index": index,
                    "name": torch.cuda.get_device_name(index),
                    "capability": f"{major}.{minor}",
                }
            )
    return {
        "graphguard": {"version": __version__, "self_test": _self_test()},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
        },
        "torch": {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": cuda_available,
            "devices": devices,
            "cuda_graph": _cuda_graph_smoke_test() if cuda_available else "skipped (no CUDA)",
        },
        "features": _features(),
        "logging": _logging_info(structlog_was_configured),
    }


def _doctor_text(info: dict[str, Any]) -> str:
    t, gg, log = info["torch"], info["graphguard"], info["logging"]
    if t["cuda_available"]:
        cuda = f"available (CUDA {t['cuda_build']}, {len(t['devices'])} device(s))"
    elif t["cuda_build"]:
        cuda = f"not available (torch built with CUDA {t['cuda_build']}; no usable device)"
    else:
        cuda = "not available (this torch has no CUDA support)"
    lines = [
        f"graphguard   {gg['version']} (self-test: {gg['self_test']})",
        f"python       {info['python']['version']} ({info['python']['platform']})",
        f"torch        {t['version']}",
        f"cuda         {cuda}",
    ]
    for d in t["devices"]:
        lines.append(f"  gpu {d['index']}      {d['name']} (compute capability {d['capability']})")
    lines.append(f"cuda graph   {t['cuda_graph']}")
    lines.append("features")
    for key, present in info["features"].items():
        mark = "yes" if present else ("unknown" if present is None else "no")
        lines.append(f"  {mark:<8} {_FEATURE_LABELS[key]}")
    lines.append("logging")
    lines.append(
        f"  structlog {log['structlog_version']}, configured: {log['structlog_configured']}"
    )
    env = log["GRAPHGUARD_LOG"]
    shown = env if env is not None else "(unset)"
    lines.append(f"  GRAPHGUARD_LOG={shown}: json logs {log['json_logs']}")
    return "\n".join(lines) + "\n"


def _cmd_doctor(ns: argparse.Namespace, structlog_was_configured: bool) -> int:
    info = _doctor_info(structlog_was_configured)
    if ns.format == "json":
        _write(json.dumps(info, indent=2) + "\n")
    else:
        _write(_doctor_text(info))
    problems = [
        info["graphguard"]["self_test"] != "ok",
        info["torch"]["cuda_graph"].startswith("failed"),
        info["logging"]["json_logs"].startswith("invalid"),
    ]
    return 1 if any(problems) else 0


# --- certify --------------------------------------------------------------------------------------
def _cmd_certify(args: list[str]) -> int:
    try:
        from ._certify import main as certify_main
    except ImportError as e:
        return _error("certify", f"not available in this installation ({e})")
    try:
        return int(certify_main(args) or 0)
    except SystemExit as e:  # its argparse exits for --help and usage errors
        return e.code if isinstance(e.code, int) else EXIT_USAGE
