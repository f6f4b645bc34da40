"""Differential test on a GPU: graphguard reports a hazard exactly when plain torch cannot capture.

Hypothesis draws short steps from a vocabulary of legal and hazardous one-line ops on a CUDA
tensor. Each step is written to a file, then

1. run raw under ``torch.cuda.graph`` in a worker process (a failed raw capture can leave the
   CUDA context unusable, so a worker that saw one is replaced by a spare that booted meanwhile):
   warm-up, capture, two replays on new inputs, each compared with an eager call;
2. run in this process under ``graphguard.capture(mode="capture")``.

graphguard must report exactly when the raw capture failed or its replays differed from eager,
and also for the hazards torch itself is silent about (non-blocking device-to-host copy, pinned
allocation, pinned host-to-device copy, default-stream escape: the measured ground-truth table).
Where graphguard is silent, its own replays must equal eager. Examples are derandomized and
bounded (``MAX_EXAMPLES`` drawn plus one explicit example per hazard op), without shrinking.

Run as ``python tests/test_differential_cuda.py --worker`` it is the raw worker: one JSON request
per stdin line, one JSON answer per stdout line; it never imports graphguard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import torch
from differential_ops import BY_NAME, HAZARD_OPS, LEGAL_OPS, load_step, program, with_hazard

hyp = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

pytestmark = pytest.mark.cuda

MAX_EXAMPLES = 45
N = 16
REPLAYS = 2
WORKER_SPARES = 4
RAW_TIMEOUT_S = 30.0


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=g).cuda()
    pinned = torch.randn(N, generator=g).pin_memory()
    idx = torch.randperm(N, generator=g).cuda()
    torch.cuda.synchronize()
    return x, pinned, idx


def _warm_up(step: Any, args: tuple[torch.Tensor, ...]) -> None:
    """Two eager calls on a side stream (the torch.cuda.graph recipe), then a fresh RNG seed so
    that a reseed inside the capture really changes the seed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.seed()


def _replays_match(
    step: Any, replay: Any, out: torch.Tensor, args: tuple[torch.Tensor, ...]
) -> bool:
    """Replays on new inputs equal eager calls on the same inputs."""
    x, pinned, _ = args
    g = torch.Generator().manual_seed(1)
    for _ in range(REPLAYS):
        x.copy_(torch.randn(N, generator=g))
        pinned.copy_(torch.randn(N, generator=g))
        replay()
        torch.cuda.synchronize()
        got = out.clone()
        want = step(*args)
        torch.cuda.synchronize()
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
            return False
    return True


# --- the raw worker (never imports graphguard) ----------------------------------------------------
def _raw(path: str) -> dict[str, Any]:
    step = load_step(path)
    args = _inputs()
    _warm_up(step, args)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            out = step(*args)
    except Exception as e:
        return {"capture": "error", "error": f"{type(e).__name__}: {e}"[:300]}
    return {"capture": "ok", "match": _replays_match(step, g.replay, out, args)}


def _worker() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the step's own prints must not reach the protocol stream
    torch.zeros(1, device="cuda")
    protocol.write("READY\n")
    for line in sys.stdin:
        try:
            answer = _raw(json.loads(line)["path"])
        except Exception as e:
            answer = {"capture": "error", "error": f"{type(e).__name__}: {e}"[:300]}
        protocol.write(json.dumps(answer) + "\n")
    return 0


class RawPool:
    """Raw workers: one in use, spares booting; a worker that saw a failure is replaced."""

    def __init__(self) -> None:
        self.booted: set[int] = set()
        self.ready: deque[subprocess.Popen[str]] = deque(
            self._spawn() for _ in range(WORKER_SPARES)
        )

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )

    def _readline(self, proc: subprocess.Popen[str], timeout: float) -> str | None:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], timeout)
        return proc.stdout.readline() if readable else None

    def run(self, path: str) -> dict[str, Any]:
        proc = self.ready.popleft()
        if proc.pid not in self.booted:
            assert self._readline(proc, 120.0) == "READY\n", "raw worker did not start"
            self.booted.add(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"path": path}) + "\n")
        line = self._readline(proc, RAW_TIMEOUT_S)
        answer = json.loads(line) if line else {"capture": "error", "error": "worker hung or died"}
        if answer["capture"] == "ok" and answer["match"]:
            self.ready.appendleft(proc)  # healthy: keep using it
        else:
            self._stop(proc)
            self.ready.append(self._spawn())
        return dict(answer)

    @staticmethod
    def _stop(proc: subprocess.Popen[str]) -> None:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def close(self) -> None:
        for proc in self.ready:
            self._stop(proc)


# --- the test -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_pool() -> Any:
    pool = RawPool()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def programs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("differential")


def _write(names: tuple[str, ...], directory: Path) -> str:
    digest = hashlib.sha1("|".join(names).encode()).hexdigest()[:12]
    path = directory / f"step_{digest}.py"
    path.write_text(program(names))
    return str(path)


def _graphguard(path: str) -> tuple[bool, bool | None, str]:
    """(reported, replay matched eager if captured, what was reported)."""
    import graphguard

    step = load_step(path)
    args = _inputs()
    _warm_up(step, args)
    try:
        with graphguard.capture(mode="capture") as cap:
            out = step(*args)
    except graphguard.HazardError as err:
        d = err.diagnostic
        return True, None, f"{d.code} line {d.lineno}: {d.source_line.strip()}"
    return False, _replays_match(step, cap.replay, out, args), ""


def sequences() -> Any:
    """Up to three legal ops with at most one hazardous op inserted somewhere among them."""
    legal = st.lists(st.sampled_from(LEGAL_OPS), min_size=0, max_size=3)
    hazard = st.one_of(st.none(), st.sampled_from(HAZARD_OPS))
    return st.builds(with_hazard, legal, hazard, st.integers(0, 3)).filter(bool)


def _with_each_hazard_alone(test: Any) -> Any:
    for name in HAZARD_OPS:
        test = hyp.example(names=(name,))(test)
    for name in LEGAL_OPS:  # every legal op at least once, whatever the draws
        test = hyp.example(names=(name,))(test)
    return test


@pytest.mark.timeout(300)
@hyp.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[hyp.Phase.explicit, hyp.Phase.generate],
    suppress_health_check=list(hyp.HealthCheck),
)
@_with_each_hazard_alone
@hyp.given(names=sequences())
def test_graphguard_reports_exactly_when_raw_capture_fails_or_replays_wrong(
    names: tuple[str, ...], raw_pool: RawPool, programs_dir: Path
) -> None:
    """graphguard reports a step iff raw torch rejects it, replays it wrong, or it holds a hazard
    torch is silent about; a step graphguard lets through replays equal to eager."""
    path = _write(names, programs_dir)
    raw = raw_pool.run(path)
    raw_bad = raw["capture"] != "ok" or not raw["match"]
    silent = any(BY_NAME[n].kind == "silent" for n in names)
    reported, matched, what = _graphguard(path)
    context = f"ops={list(names)} raw={raw} graphguard={what or 'silent'}"
    assert reported == (raw_bad or silent), context
    if not reported:
        assert matched is True, context


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(_worker())
