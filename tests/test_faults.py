"""Faults and misuse leave nothing behind: interrupts, fork, threads, logging, hostile input."""

from __future__ import annotations

import _thread
import contextlib
import gc
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
import torch
import torch._dynamo  # imported inside a region, it would rebind torch.manual_seed
import torch.optim.optimizer as optimizer_module

import graphguard
from graphguard import (
    ConfigError,
    GraphGuardError,
    HostSyncError,
    StaleHostScalarError,
    _interrupts,
    _log,
    _patches,
)
from graphguard._state import current_state

HAS_FORK = hasattr(os, "fork")
# Hazards need a device tensor: on a GPU machine a CPU tensor is genuinely on the host (reading
# it is legal), and without CUDA audit mode lets CPU tensors stand for device tensors.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _pristine_snapshot() -> dict[tuple[int, str], object]:
    return {
        (id(owner), name): vars(owner).get(name, "<inherited>")
        for owner, name in _patches.installed_targets()
    }


def _assert_pristine(before: dict[tuple[int, str], object], hooks_before: dict) -> None:
    hooks = dict(getattr(optimizer_module, "_global_optimizer_pre_hooks", {}))
    assert hooks == hooks_before, "a global optimizer step hook was left registered"
    assert not _patches.is_installed(), "graphguard patches are still installed"
    assert _pristine_snapshot() == before, "a torch attribute was left patched"
    assert "pin_memory" not in vars(torch.Tensor), "Tensor.pin_memory shadow left behind"
    assert torch._C._len_torch_function_stack() == 0, "a torch function mode was left active"
    assert current_state() is None, "this thread is still guarded"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not _interrupts.PENDING, "an interrupt was held back, never delivered"


@contextlib.contextmanager
def _no_gc_callbacks():
    """Without other libraries' gc callbacks (hypothesis installs one once it has run a test).

    CPython reports an exception raised inside a gc callback as unraisable and drops it, so a
    Ctrl-C landing there is lost: a CPython behaviour, not what these tests examine.
    """
    saved = gc.callbacks[:]
    gc.callbacks.clear()
    try:
        yield
    finally:
        gc.callbacks[:] = saved


@contextlib.contextmanager
def _dropped_interrupts():
    """Collect the Ctrl-Cs that CPython raised inside a weakref callback and dropped.

    CPython reports an exception raised in a weakref callback (a ``WeakSet``'s ``_remove``,
    say, run when some object dies) as unraisable and goes on: a Ctrl-C landing there never
    reaches the code that was running. Yields the list they are appended to; other
    unraisable exceptions go to the previous hook.
    """
    dropped: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, KeyboardInterrupt):
            dropped.append(args.exc_value)
        else:
            previous(args)

    sys.unraisablehook = hook
    try:
        yield dropped
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def _busy_host(n: int = 2):
    """Two CPU-bound processes beside the test, so interrupts land at uneven points."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _step_kinds():
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 8)

    def body() -> None:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()  # a host sync: a hazard, logged under warn

    def in_capture() -> None:
        with graphguard.capture(mode="audit", on_hazard="warn", label="interrupted"):
            body()

    guarded = graphguard.guard(on_hazard="warn", label="interrupted")(body)

    def in_graphed() -> None:
        step = graphguard.graphed(warmup=0, on_hazard="warn")(body)
        step()

    def nested() -> None:
        with graphguard.capture(mode="audit", on_hazard="warn", label="outer"):
            guarded()

    # The fault model is audit's (the CPU contract); a graphed step on a GPU machine would
    # capture a real graph of these CPU tensors, which is not what this test interrupts.
    if torch.cuda.is_available():
        return [in_capture, guarded, nested]
    return [in_capture, guarded, in_graphed, nested]


def _interrupter(delay: float) -> tuple[threading.Thread, list[bool], list[bool]]:
    """A started thread that sends one Ctrl-C ``delay`` seconds after ``go[0]`` is set.

    The main thread hands over through plain list items, never an Event or a join: an interrupt
    raised inside ``threading``'s own lock handling (``Event.wait``, ``Thread.start``) breaks
    that lock ("release unlocked lock"), a CPython limitation, not what these tests examine.
    """
    go, fired = [False], [False]

    def fire() -> None:
        while not go[0]:
            time.sleep(0.00005)
        time.sleep(delay)
        _thread.interrupt_main()
        fired[0] = True

    thread = threading.Thread(target=fire)
    thread.start()
    return thread, go, fired


def _interrupt_once(region: Callable[[], None], delay: float, dropped: list[BaseException]) -> None:
    """Run ``region`` while one Ctrl-C arrives ``delay`` seconds after it starts.

    Whatever the region raises, the Ctrl-C is taken here: an unexpected error must reach the
    test as itself, not be replaced by an interrupt landing later in pytest's own code. A
    Ctrl-C that CPython dropped in a weakref callback (``dropped`` grows: see
    ``_dropped_interrupts``) interrupted nothing; the callers bound how many may be dropped.
    """
    interrupter, go, fired = _interrupter(delay)
    seen = len(dropped)
    try:
        go[0] = True
        region()
        _let_it_arrive(fired)
        if len(dropped) == seen:
            raise AssertionError("the interrupt was never delivered")
    except KeyboardInterrupt:
        pass
    except BaseException:
        _absorb_interrupt(fired)
        raise
    interrupter.join()
    # torch's own ``Optimizer.step`` sets grad mode off and back in Python (``_use_grad``): a
    # Ctrl-C between the two leaves grad mode off with or without graphguard. That is torch's
    # state, not graphguard's; the next region must start from the user's usual state.
    torch.set_grad_enabled(True)


def _absorb_interrupt(fired: list[bool]) -> None:
    """Wait for the pending Ctrl-C and swallow it (the region already failed)."""
    with contextlib.suppress(KeyboardInterrupt):
        _let_it_arrive(fired)


def _let_it_arrive(fired: list[bool]) -> None:
    """Wait, in plain sleeps, until the Ctrl-C was sent and had time to be raised."""
    while not fired[0]:
        time.sleep(0.0001)
    for _ in range(1000):  # it is raised at the next check point
        time.sleep(0.0001)


def test_random_interrupts_leave_torch_pristine() -> None:
    """A Ctrl-C at random points of guarded regions never leaves torch patched or a hook set."""
    before, hooks_before = _pristine_snapshot(), dict(optimizer_module._global_optimizer_pre_hooks)
    kinds = _step_kinds()
    with structlog.testing.capture_logs():
        for region in kinds:  # torch's lazy imports happen here, not under an interrupt
            region()
    switch = sys.getswitchinterval()
    # The interrupting thread needs the GIL to fire; a short switch interval lets it land inside
    # a region rather than after it.
    sys.setswitchinterval(1e-6)
    with (
        _no_gc_callbacks(),
        _dropped_interrupts() as dropped,
        _busy_host(),
        contextlib.ExitStack() as restore,
    ):
        restore.callback(sys.setswitchinterval, switch)
        for seed in range(6):
            rng = random.Random(seed)
            for i in range(40):
                with structlog.testing.capture_logs():
                    _interrupt_once(kinds[i % len(kinds)], rng.uniform(0.0, 0.001), dropped)
                    with graphguard.capture(mode="audit", label="clean"):  # the next clean region
                        torch.ones(2).add_(1)
                _assert_pristine(before, hooks_before)
    assert len(dropped) <= 24, f"{len(dropped)} of 240 interrupts were dropped by CPython"


def test_region_closed_after_its_enclosing_region_is_not_resurrected() -> None:
    """A region opened in a generator and closed after its enclosing region leaves no state."""

    def inner():
        with graphguard.capture(mode="audit", on_hazard="warn", label="inner"):
            yield

    gen = inner()
    outer = graphguard.capture(mode="audit", on_hazard="warn", label="outer")
    outer.__enter__()
    next(gen)
    outer.__exit__(None, None, None)
    with contextlib.suppress(StopIteration):
        next(gen)
    assert current_state() is None

    holding, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with graphguard.capture(mode="audit", label="other"):
            holding.set()
            release.wait()

    worker = threading.Thread(target=other_thread)
    worker.start()
    holding.wait()
    try:
        torch.manual_seed(0)  # unguarded here, while another thread holds a guard
    finally:
        release.set()
        worker.join()


@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_child_forked_in_a_region_is_unguarded() -> None:
    """A child forked inside a region runs unguarded: a host sync there is not a hazard."""
    read, write = os.pipe()
    with graphguard.capture(mode="audit", label="parent"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                torch.arange(3.0).tolist()
                ok = current_state() is None and not _patches.is_installed()
                os.write(write, b"ok" if ok else b"guarded")
            except BaseException as e:
                os.write(write, type(e).__name__.encode())
            finally:
                os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert answer == b"ok"


def _raising_processor(logger, method_name, event_dict):
    raise ZeroDivisionError("the logger is broken")


def test_broken_logger_does_not_replace_a_warned_hazard() -> None:
    """A structlog processor that raises does not turn a warn region into that exception."""
    structlog.configure(processors=[_raising_processor])
    try:
        x = torch.ones(2, device=DEV)
        with graphguard.capture(mode="audit", on_hazard="warn") as cap:
            x.sum().item()
    finally:
        structlog.reset_defaults()
    assert [d.code for d in cap.hazards] == ["GG101"]


def test_broken_logger_does_not_replace_a_raised_hazard() -> None:
    """Under raise, the user gets the HazardError, not the logger's exception."""
    structlog.configure(processors=[_raising_processor])
    try:
        x = torch.ones(2, device=DEV)
        with pytest.raises(HostSyncError), graphguard.capture(mode="audit", on_hazard="raise"):
            x.sum().item()
    finally:
        structlog.reset_defaults()


def test_broken_logger_does_not_break_a_graphed_step_going_eager() -> None:
    """A hazard in a graphed step's capturing call under warn makes it eager for good; the
    event that says so goes through a broken logger without replacing the call's result."""
    structlog.configure(processors=[_raising_processor])
    try:

        @graphguard.graphed(warmup=0, on_hazard="warn")
        def step(x):
            x.sum().item()
            return x * 2

        out = step(torch.ones(2, device=DEV))
    finally:
        structlog.reset_defaults()
    torch.testing.assert_close(out, torch.full((2,), 2.0, device=DEV))
    assert step.stats["eager"]


@pytest.fixture
def restore_log_env(monkeypatch):
    yield monkeypatch
    monkeypatch.delenv(_log.ENV_VAR, raising=False)
    _log.check_env()


def test_invalid_graphguard_log_fails_every_region(restore_log_env) -> None:
    """An invalid GRAPHGUARD_LOG is a ConfigError naming the variable at every region start."""
    restore_log_env.setenv("GRAPHGUARD_LOG", "yaml")
    for _ in range(2):
        with pytest.raises(ConfigError, match="GRAPHGUARD_LOG='yaml'"), graphguard.capture():
            pass


def test_graphguard_log_takes_only_hazards_after_structlog_was_configured(
    restore_log_env, tmp_path
) -> None:
    """With structlog configured at its default level (debug events wanted), the region that
    first applies GRAPHGUARD_LOG still writes only its hazard: region events go to the JSON
    output only with ``enable_json_logs(regions=True)``, whatever structlog allows."""
    path = tmp_path / "events.jsonl"
    x = torch.ones(2, device=DEV)
    saved = structlog.get_config()
    structlog.configure()  # configured, every level enabled
    try:
        restore_log_env.setenv("GRAPHGUARD_LOG", f"json:{path}")
        with graphguard.capture(mode="audit", on_hazard="warn"):
            x.sum().item()
    finally:
        structlog.configure(**saved)
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["graphguard.hazard"]


def test_graphguard_log_changed_between_regions_is_applied(restore_log_env, tmp_path) -> None:
    """Each region start reads GRAPHGUARD_LOG again: a new path, or none, takes effect."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    x = torch.ones(2, device=DEV)

    def region() -> None:
        with graphguard.capture(mode="audit", on_hazard="warn"):
            x.sum().item()

    def events(path) -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    restore_log_env.setenv("GRAPHGUARD_LOG", f"json:{first}")
    region()
    assert (events(first), events(second)) == (1, 0)
    restore_log_env.setenv("GRAPHGUARD_LOG", f"json:{second}")
    region()
    assert (events(first), events(second)) == (1, 1)
    restore_log_env.delenv("GRAPHGUARD_LOG")
    region()
    assert (events(first), events(second)) == (1, 1)
    restore_log_env.setenv("GRAPHGUARD_LOG", f"json:{first}")
    region()
    assert (events(first), events(second)) == (2, 1)


@pytest.mark.parametrize(
    ("make_path", "problem"),
    [
        (lambda tmp: "/dev/full", "not a regular file"),
        (lambda tmp: str(tmp), "Is a directory"),
        (lambda tmp: str(tmp / "missing" / "log.jsonl"), "No such file"),
    ],
    ids=["device", "directory", "missing-folder"],
)
def test_unusable_log_path_is_a_config_error(restore_log_env, tmp_path, make_path, problem) -> None:
    """A GRAPHGUARD_LOG path that cannot hold a log is a ConfigError, at every region start."""
    path = make_path(tmp_path)
    if not os.path.exists(os.path.dirname(path)) and "missing" not in path:
        pytest.skip(f"{path} does not exist here")
    restore_log_env.setenv("GRAPHGUARD_LOG", f"json:{path}")
    for _ in range(2):
        with (
            pytest.raises(ConfigError, match=f"GRAPHGUARD_LOG=.*{problem}"),
            graphguard.capture(),
        ):
            pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_log_path_on_a_fifo_fails_without_hanging(tmp_path) -> None:
    """GRAPHGUARD_LOG=json:<a FIFO> is a ConfigError, not a region that waits for a reader."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    program = textwrap.dedent(
        """
        import graphguard
        for _ in range(2):
            try:
                with graphguard.capture():
                    pass
            except graphguard.ConfigError as e:
                print("ConfigError", "GRAPHGUARD_LOG" in str(e))
        """
    )
    env = {**os.environ, "GRAPHGUARD_LOG": f"json:{fifo}"}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["ConfigError", "True", "ConfigError", "True"]


def test_capture_keeps_repeated_hazards() -> None:
    """Three hazards on one line under warn are three entries of cap.hazards."""
    x = torch.ones(2, device=DEV)
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        for _ in range(3):
            x.sum().item()
    assert [d.code for d in cap.hazards] == ["GG101"] * 3


def test_guard_refuses_a_generator_function() -> None:
    """@guard on a generator function is refused at decoration time, not silently unchecked."""

    def steps(x):
        yield x.sum().item()

    with pytest.raises(ConfigError, match="generator function"):
        graphguard.guard(steps)


def test_guard_refuses_an_async_function() -> None:
    """@guard on an async def is refused at decoration time, not silently unchecked."""

    async def step(x):
        return x.sum().item()

    with pytest.raises(ConfigError, match="async"):
        graphguard.guard(on_hazard="warn")(step)


def test_buckets_refuse_a_step_that_mixes_rows() -> None:
    """Padding a step whose result depends on the padding rows is a ConfigError."""

    @graphguard.graphed(buckets=[8], warmup=0)
    def step(x):
        return x.mean(0)

    with pytest.raises(ConfigError, match="the output: its values differ"):
        step(torch.ones(5, 3))


def test_buckets_cut_only_outputs_with_one_row_per_input_row() -> None:
    """A padded step returns 5 rows for 5 input rows and leaves an unrelated 8-row output whole."""
    table = torch.arange(32.0, device=DEV).view(8, 4)

    @graphguard.graphed(buckets=[8], warmup=0)
    def step(x):
        return x * 2, table.clone()

    for _ in range(3):  # the proof, the capturing call, a replay
        rows, whole = step(torch.ones(5, 4, device=DEV))
        assert rows.shape == (5, 4)
        assert whole.shape == (8, 4)
        torch.testing.assert_close(whole * 1, table)


def test_region_left_in_another_thread_is_refused_and_changes_nothing() -> None:
    """Leaving a region from another thread is refused; the entering thread still leaves it."""
    cap = graphguard.capture(mode="audit", label="here")
    cap.__enter__()
    errors: list[BaseException] = []
    other_guarded: list[object] = []

    def leave_elsewhere() -> None:
        try:
            cap.__exit__(None, None, None)
        except BaseException as e:
            errors.append(e)
        other_guarded.append(current_state())
        torch.arange(3.0).tolist()  # this thread is not guarded

    worker = threading.Thread(target=leave_elsewhere)
    worker.start()
    worker.join()
    assert current_state() is not None
    cap.__exit__(None, None, None)
    assert len(errors) == 1 and isinstance(errors[0], GraphGuardError)
    assert "thread that entered it" in str(errors[0])
    assert other_guarded == [None]


def test_label_with_control_characters_is_refused() -> None:
    """A label holding an escape sequence or a newline is a ConfigError, never written raw."""
    with pytest.raises(ConfigError, match="control characters"):
        graphguard.capture(mode="audit", label="step\x1b[2J\nGG000 forged")


def test_diagnostic_text_escapes_control_characters(tmp_path) -> None:
    """A file name and source line holding ESC and newlines are escaped in the diagnostic."""
    path = tmp_path / "evil\x1b[31m\nname.py"
    path.write_text("def step(x):\n    return x.sum().item()  # '\x1b]0;title\x07'\n")
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    x = torch.ones(2, device=DEV)
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        namespace["step"](x)
    text = str(cap.hazards[0])
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[31m\\nname.py" in text
    assert len(text.splitlines()) == len(str(cap.hazards[0]).splitlines())
    assert all(line.startswith((" ", "GG", "1", "2")) for line in text.splitlines())


def test_console_log_fields_escape_control_characters(tmp_path) -> None:
    """The hazard event's fields hold escaped control characters: a console shows none raw."""
    path = tmp_path / "evil\x1b[31m.py"
    path.write_text("def step(x):\n    return x.sum().item()\n")
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(stream),
    )
    x = torch.ones(2, device=DEV)
    try:
        with graphguard.capture(mode="audit", on_hazard="warn"):
            namespace["step"](x)
    finally:
        structlog.reset_defaults()
    assert "graphguard.hazard" in stream.getvalue()
    assert "\x1b" not in stream.getvalue()


def test_stale_tensor_lr_message_shows_no_tensor_value() -> None:
    """A GG601 for a 0-dim CPU tensor lr shows no tensor value in message, details or log."""
    model = torch.nn.Linear(2, 2).to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.123456))
    x = torch.ones(4, 2, device=DEV)

    @graphguard.graphed(warmup=1)  # on a GPU: a warm-up initialises cuBLAS
    def step(x):
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    step(x)
    step(x)  # the capture
    opt.param_groups[0]["lr"].fill_(0.654321)
    with structlog.testing.capture_logs() as logs, pytest.raises(StaleHostScalarError) as info:
        step(x)
    diagnostic = info.value.diagnostic
    assert diagnostic.code == "GG601"
    text = str(info.value) + repr(diagnostic.to_dict()) + repr(logs)
    for value in ("0.123", "0.654", "1234", "4321"):
        assert value not in text


def _check(tmp_path, source: str, *options: str) -> subprocess.CompletedProcess:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "graphguard", "check", *options, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


_HAZARD = """
    import os, sys, torch, graphguard

    def step(tag):
        x = torch.ones(2, device="cuda" if torch.cuda.is_available() else "cpu")
        with graphguard.capture(mode="audit", label=tag):
            x.sum().item()
"""


@pytest.mark.skipif(not HAS_FORK, reason="needs os.fork")
def test_check_reports_a_forked_child_once(tmp_path) -> None:
    """A hazard in an os.fork() child is in the one report; only one report is written."""
    done = _check(
        tmp_path,
        _HAZARD
        + """
    pid = os.fork()
    if pid == 0:
        step("child")
    else:
        os.waitpid(pid, 0)
        step("parent")
    """,
        "--format",
        "jsonl",
    )
    records = [json.loads(line) for line in done.stdout.splitlines()]
    summaries = [r for r in records if "summary" in r]
    assert len(summaries) == 1
    assert summaries[0]["summary"]["occurrences"] == 2  # the child's and the parent's


def test_check_reports_a_spawned_child(tmp_path) -> None:
    """A hazard in a multiprocessing child started with spawn is reported by check."""
    done = _check(
        tmp_path,
        _HAZARD
        + """
    if __name__ == "__main__":
        import multiprocessing as mp
        proc = mp.get_context("spawn").Process(target=step, args=("spawned",))
        proc.start()
        proc.join()
    """,
        "--format",
        "jsonl",
    )
    labels = [json.loads(line).get("label") for line in done.stdout.splitlines()]
    assert "spawned" in labels
    assert done.returncode == 1


def test_check_sarif_on_stdout_survives_raw_writes(tmp_path) -> None:
    """os.write(1, ...) in the program does not corrupt a SARIF report written on stdout."""
    done = _check(
        tmp_path,
        _HAZARD + '\n    os.write(1, b"raw bytes on fd 1\\n")\n    step("main")\n',
        "--format",
        "sarif",
    )
    sarif = json.loads(done.stdout)
    assert len(sarif["runs"][0]["results"]) == 1


def test_check_custom_base_exception_is_one_line(tmp_path) -> None:
    """A program ending in a custom BaseException gets exit status 3 and no graphguard traceback."""
    done = _check(
        tmp_path,
        """
        class Stop(BaseException):
            pass

        raise Stop("halt")
        """,
    )
    assert done.returncode == 3
    assert "Stop: halt" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not HAS_FORK, reason="the supervised check needs os.fork")
@pytest.mark.parametrize("status", [0, 5])
def test_check_reports_a_program_that_ends_with_os_exit(tmp_path, status) -> None:
    """A program leaving with os._exit() after a hazard still gets its report and exit status."""
    done = _check(
        tmp_path, _HAZARD + f'\n    step("main")\n    os._exit({status})\n', "--format", "jsonl"
    )
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r.get("code") for r in records if "code" in r] == ["GG101"], done.stdout
    assert done.returncode == 1  # hazards found
    summary = next(r["summary"] for r in records if "summary" in r)
    assert summary["occurrences"] == 1
    if status:
        assert f"os._exit({status})" in done.stderr


@pytest.mark.skipif(not HAS_FORK, reason="the supervised check needs os.fork")
def test_check_reports_a_program_killed_by_a_signal(tmp_path) -> None:
    """A program that dies of SIGKILL after a hazard: the hazard is reported, and the death."""
    done = _check(
        tmp_path,
        _HAZARD + '\n    step("main")\n    os.kill(os.getpid(), 9)\n',
        "--format",
        "jsonl",
    )
    codes = [json.loads(line).get("code") for line in done.stdout.splitlines()]
    assert "GG101" in codes
    assert "killed by signal 9" in done.stderr


@pytest.mark.cuda
def test_random_interrupts_in_real_captures_leave_cuda_usable() -> None:
    """A Ctrl-C at random points of real capture regions (graphed steps included): afterwards
    torch is pristine, no capture is left recording, CUDA work runs and a new capture replays."""
    before, hooks_before = _pristine_snapshot(), dict(optimizer_module._global_optimizer_pre_hooks)
    model = torch.nn.Linear(64, 64).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 64, device="cuda")

    def body() -> None:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    side = torch.cuda.Stream()  # the usual warm-up before any capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)

    def in_capture() -> None:
        with graphguard.capture(mode="capture", label="interrupted"):
            body()

    def in_graphed() -> None:
        step = graphguard.graphed(warmup=1)(body)
        step()
        step()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with _no_gc_callbacks(), _dropped_interrupts() as dropped:
            for seed in range(3):
                rng = random.Random(seed)
                for i in range(20):
                    region = (in_capture, in_graphed)[i % 2]
                    with structlog.testing.capture_logs():
                        _interrupt_once(region, rng.uniform(0.0, 0.002), dropped)
                    assert not torch.cuda.is_current_stream_capturing()
                    torch.cuda.synchronize()
                    _assert_pristine(before, hooks_before)
        assert len(dropped) <= 6, f"{len(dropped)} of 60 interrupts were dropped by CPython"
    finally:
        sys.setswitchinterval(switch)
    g = torch.cuda.CUDAGraph()  # a fresh capture still records and replays
    y = torch.zeros(4, device="cuda")
    with torch.cuda.graph(g):
        y.add_(1)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, torch.ones(4, device="cuda"))  # recorded once, replayed once


def test_region_exit_copes_with_a_mode_stack_an_interrupt_left_short() -> None:
    """A Ctrl-C between torch's pop and push of the mode around one call (inside
    ``torch.overrides._pop_mode_temporarily``) leaves the stack without graphguard's mode: the
    region still ends cleanly, with nothing left on the stack and torch unpatched."""
    before = _pristine_snapshot()
    with pytest.raises(KeyboardInterrupt), graphguard.capture(mode="audit", label="short stack"):
        torch._C._pop_torch_function_stack()  # what the interrupted dispatch did
        raise KeyboardInterrupt
    assert torch.overrides._get_current_function_mode_stack() == []
    _assert_pristine(before, dict(optimizer_module._global_optimizer_pre_hooks))


def _mode_swap_exit(frame) -> bool:
    """Is ``frame`` the context manager's exit around torch's mode-popping generator?"""
    if frame.f_code is not contextlib._GeneratorContextManager.__exit__.__code__:
        return False
    gen = getattr(frame.f_locals.get("self"), "gen", None)
    swap = torch.overrides._pop_mode_temporarily.__wrapped__  # type: ignore[attr-defined]
    return getattr(gen, "gi_code", None) is swap.__code__


def test_ctrl_c_as_torch_restores_the_mode_is_held_until_the_stack_is_whole() -> None:
    """A Ctrl-C on the first instruction of ``__exit__`` of torch's ``_pop_mode_temporarily``
    (the generator that pushes the mode back is then never resumed, and the garbage collector
    would push graphguard's mode back whenever it closes the generator, after the region ended)
    is held back and delivered once the mode is back: the stack is empty after the region."""
    fired: list[bool] = []
    reached_end: list[bool] = []

    def tracer(frame, event, arg):  # runs the SIGINT handler where CPython would run it
        if event == "call" and not fired and _mode_swap_exit(frame):
            fired.append(True)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)

    before = _pristine_snapshot()
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(KeyboardInterrupt), graphguard.capture(mode="audit", label="swap"):
        loss = (x * 2).sum()
        sys.settrace(tracer)
        try:
            loss.backward()  # Tensor.backward is dispatched through _pop_mode_temporarily
        finally:
            sys.settrace(None)
        torch.ones(1)  # the next torch call delivers it: the region's end is not reached
        reached_end.append(True)
    assert not reached_end, "the held Ctrl-C waited past the next torch call"
    assert fired, "the dispatch did not pass through torch's mode-popping context manager"
    gc.collect()  # closes any generator an interrupt left suspended
    assert torch.overrides._get_current_function_mode_stack() == []
    assert torch.equal(x.grad, torch.full((3,), 2.0)), "the call itself ran to its end"
    _assert_pristine(before, dict(optimizer_module._global_optimizer_pre_hooks))


def test_ctrl_c_in_the_host_tensor_weakref_callback_is_not_lost() -> None:
    """CPython drops an exception raised in a weakref callback: a Ctrl-C landing in the callback
    that forgets a dead host tensor is held and raised at the next torch call instead."""
    from graphguard._emulation import _forget

    fired: list[bool] = []

    def tracer(frame, event, arg):
        if event == "call" and not fired and frame.f_code is _forget.__code__:
            fired.append(True)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)

    if torch.cuda.is_available():
        pytest.skip("host tensors are tracked only while emulating (no CUDA)")
    reached: list[bool] = []
    with pytest.raises(KeyboardInterrupt), graphguard.capture(mode="audit"):
        host = torch.arange(4)  # made in the region without a device: a genuine host tensor
        sys.settrace(tracer)
        try:
            del host  # the weakref callback runs here
        finally:
            sys.settrace(None)
        torch.ones(1)  # delivered here
        reached.append(True)
    assert fired, "the callback did not run"
    assert not reached
