"""graphguard under torchrun (CPU, gloo, audit mode): collective hazards, rank-tagged
diagnostics, and no rank left hanging when a hazard fires on one rank only.

The job itself is ``tests/dist_job.py``, launched once per module with
``python -m torch.distributed.run --standalone --nproc-per-node 2``; the tests read what each
rank wrote. The agreement protocol is also tested in-process on a ``HashStore``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist

import graphguard
from graphguard import _dist
from graphguard._check import _diagnostic_from_dict

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

ROOT = Path(__file__).resolve().parent.parent
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # a hazard needs a device tensor
JOB = Path(__file__).resolve().parent / "dist_job.py"
#: Cases whose hazard line is marked under another name in dist_job.py.
_MARKERS = {"ddp_before_warm_up": "ddp_forward"}
#: The whole 2-rank job must end well inside gloo's own 30 s timeout.
JOB_BOUND_S = 20.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHGUARD_")}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # The CPU audit contract (gloo, CPU tensors standing for device tensors): on a GPU machine
    # CPU tensors are genuine host tensors, so the job hides the GPUs. benchmarks/dist_gpu.py
    # is the NCCL counterpart.
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def _torchrun(args: list[str], cwd: Path, env: dict[str, str], limit: float) -> tuple[int, str]:
    """Run a 2-rank torchrun job; kill its whole process group if it outlives ``limit``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.Popen(
        [*cmd, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the torchrun job did not end within {limit} s (a hang):\n{out[-3000:]}")
    return proc.returncode, out


def _marker(name: str) -> int:
    for number, line in enumerate(JOB.read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# at:{name}"):
            return number
    raise AssertionError(f"no line marked {name} in {JOB}")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist_job")
    t0 = time.monotonic()
    rc, output = _torchrun([str(JOB), str(out)], out, _env(GRAPHGUARD_DIST_TIMEOUT="10"), limit=90)
    seconds = time.monotonic() - t0
    assert rc == 0, output[-3000:]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    logs: dict[int, list[dict[str, Any]]] = {}
    for rank in (0, 1):
        for line in (out / f"res.{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            results[row["case"], row["rank"]] = row
        logs[rank] = [
            json.loads(line) for line in (out / f"log.{rank}.jsonl").read_text().splitlines()
        ]
    return {"seconds": seconds, "results": results, "logs": logs, "output": output}


def _both(job: dict[str, Any], case: str) -> list[dict[str, Any]]:
    return [job["results"][case, rank] for rank in (0, 1)]


@pytest.mark.timeout(120)
def test_the_job_ends_well_inside_gloos_timeout(job: dict[str, Any]) -> None:
    """Every case of the job (a one-rank hazard and a 1.5 s agreement timeout included) ends
    quickly on each rank: the time spent in the cases, not starting two interpreters and
    importing torch, which a loaded machine can stretch; a hang is caught by the fixture's
    90 s limit."""
    per_rank = [
        sum(row.get("seconds", 0.0) for (_, r), row in job["results"].items() if r == rank)
        for rank in (0, 1)
    ]
    assert max(per_rank) < JOB_BOUND_S, (per_rank, job["output"][-2000:])


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("barrier", "GG801"),
        ("monitored_barrier", "GG801"),
        ("all_gather_object", "GG802"),
        ("broadcast_object_list", "GG802"),
        ("wait_timeout", "GG804"),
        ("is_completed", "GG804"),
        ("blocking_wait", "GG804"),
        ("ddp_before_warm_up", "GG805"),
    ],
)
def test_collective_hazards_are_reported_on_every_rank(
    job: dict[str, Any], case: str, code: str
) -> None:
    """Barriers, object collectives and host waits on a Work raise on both ranks, at the line."""
    for row in _both(job, case):
        assert row["error"] == "CollectiveError", row
        assert row["code"] == code
        assert row["lineno"] == _marker(_MARKERS.get(case, case))


def test_ddp_after_its_warm_up_is_silent(job: dict[str, Any]) -> None:
    """After 11 eager DDP iterations the captured (audited) step reports nothing and its
    gradient all-reduce (issued from C++) runs on both ranks."""
    for row in _both(job, "ddp_after_warm_up"):
        assert (row["error"], row["value"]) == (None, 0), row


def test_an_audited_fsdp2_step_is_silent_and_computes_what_eager_does(
    job: dict[str, Any],
) -> None:
    """FSDP2 (fully_shard) runs its all-gathers and reduce-scatters on gloo here: the audited
    step reports nothing and leaves the same parameters as its unguarded twin on both ranks."""
    for row in _both(job, "fsdp2_step_audited"):
        assert row["error"] is None, row
        assert row["value"] == {"hazards": 0, "same_parameters": True}, row


def test_object_collective_is_not_reported_as_a_pageable_copy(job: dict[str, Any]) -> None:
    """all_gather_object has its own rule now (GG802), not GG401 from torch's internals."""
    assert {row["code"] for row in _both(job, "all_gather_object")} == {"GG802"}


@pytest.mark.parametrize("case", ["all_reduce", "all_reduce_async_wait"])
def test_default_group_all_reduce_is_silent(job: dict[str, Any], case: str) -> None:
    """A gloo default-group all_reduce (and async + wait) stands for NCCL: silent, and it ran."""
    for row in _both(job, case):
        assert row["error"] is None, row
        assert row["value"] == [3.0] * 4  # 1 + 2 on two ranks


def test_every_diagnostic_says_which_rank(job: dict[str, Any]) -> None:
    """Diagnostic fields, its text, its SARIF result and every hazard log line carry the rank."""
    seen = 0
    for (case, rank), row in job["results"].items():
        if row.get("code") is None:
            continue
        seen += 1
        assert (row["diag_rank"], row["diag_local_rank"], row["diag_world_size"]) == (rank, rank, 2)
        assert row["text"].splitlines()[0].endswith(f"(rank {rank} of 2, local rank {rank})")
        assert row["sarif"]["rank"] == rank and row["sarif"]["world_size"] == 2, case
    assert seen >= 16
    for rank, events in job["logs"].items():
        hazards = [e for e in events if e.get("event") == "graphguard.hazard"]
        assert len(hazards) >= 8
        assert any(e.get("event") == "graphguard.dist.peer_failed" for e in events)
        for event in events:  # hazards and graphguard's other events alike
            assert (event["rank"], event["local_rank"], event["world_size"]) == (rank, rank, 2)


def test_a_hazard_on_one_rank_ends_the_region_on_every_rank(job: dict[str, Any]) -> None:
    """`.item()` on rank 1 only: rank 1 raises GG101; rank 0 raises PeerFailedError naming rank 1,
    GG101 and its line, before its all_reduce, without waiting for any timeout."""
    failing, waiting = job["results"]["one_rank_hazard", 1], job["results"]["one_rank_hazard", 0]
    line = _marker("one_rank_item")
    assert (failing["error"], failing["code"], failing["lineno"]) == (
        "HostSyncError",
        "GG101",
        line,
    )
    assert waiting["error"] == "PeerFailedError", waiting
    assert (waiting["failed_rank"], waiting["failed_code"]) == (1, "GG101")
    assert waiting["record"]["lineno"] == line
    assert f"dist_job.py:{line}" in waiting["message"]
    assert f"dist_job.py:{_marker('one_rank_all_reduce')}" in waiting["message"]
    assert waiting["seconds"] < 5.0


def test_the_failing_rank_can_be_rank_0(job: dict[str, Any]) -> None:
    """The same in a capture() region, failing on rank 0: rank 1 names rank 0 and its line."""
    failing, waiting = job["results"]["capture_one_rank", 0], job["results"]["capture_one_rank", 1]
    assert (failing["code"], failing["lineno"]) == ("GG101", _marker("capture_one_rank"))
    assert (waiting["error"], waiting["failed_rank"], waiting["failed_code"]) == (
        "PeerFailedError",
        0,
        "GG101",
    )
    assert waiting["seconds"] < 5.0


def test_ranks_stay_usable_after_a_one_rank_hazard(job: dict[str, Any]) -> None:
    """After the one-rank hazards, guarded and unguarded collectives still run on both ranks."""
    for row in _both(job, "all_reduce_after_one_rank"):
        assert (row["error"], row["value"]) == (None, [3.0] * 4)
    for row in _both(job, "alive_after"):
        assert (row["error"], row["value"]) == (None, [2.0, 2.0])


def test_warn_policy_logs_a_barrier_and_runs_it(job: dict[str, Any]) -> None:
    """on_hazard='warn' in audit: the barrier is reported once per rank and then runs."""
    for row in _both(job, "warn_barrier"):
        assert (row["error"], row["value"]) == (None, 1)


def test_a_rank_that_never_arrives_is_named_after_the_timeout(job: dict[str, Any]) -> None:
    """Rank 1 skips the region: rank 0 gives up after dist_timeout(1.5) and names rank 1."""
    row = job["results"]["late_rank", 0]
    assert row["error"] == "AgreementTimeoutError", row
    assert row["missing"] == [1]
    assert 1.4 <= row["seconds"] < 6.0


@pytest.mark.timeout(120)
def test_check_under_torchrun_writes_one_report_per_rank(tmp_path: Path) -> None:
    """`torchrun -m graphguard check -o report.{rank}.jsonl`: each rank's report, rank-tagged."""
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import datetime, torch, torch.distributed as dist, graphguard\n"
        "dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=20))\n"
        "x = torch.ones(3)\n"
        "with graphguard.capture():\n"
        "    dist.all_reduce(x)\n"
        "    dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    rc, output = _torchrun(
        ["-m", "graphguard", "check", "--format", "jsonl", "-o", "report.{rank}.jsonl", "prog.py"],
        tmp_path,
        _env(),
        limit=90,
    )
    # each rank exits with status 1 (hazards found), which torchrun reports as a failed job
    assert rc != 0, output[-3000:]
    for rank in (0, 1):
        lines = [
            json.loads(x) for x in (tmp_path / f"report.{rank}.jsonl").read_text().splitlines()
        ]
        diagnostics, summary = lines[:-1], lines[-1]["summary"]
        assert [d["code"] for d in diagnostics] == ["GG801"]
        assert (diagnostics[0]["rank"], diagnostics[0]["world_size"], diagnostics[0]["lineno"]) == (
            rank,
            2,
            6,
        )
        assert (summary["rank"], summary["world_size"]) == (rank, 2)
        assert summary["completed"] is True, summary  # the program itself ran to its end


def test_check_output_needs_rank_placeholder_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under torchrun, -o without {rank} is refused: the ranks would overwrite one report."""
    from graphguard._cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    prog = tmp_path / "p.py"
    prog.write_text("pass\n")
    status = main(["check", "-o", str(tmp_path / "report.txt"), str(prog)])
    assert status != 0
    assert "{rank}" in capsys.readouterr().err
    assert not (tmp_path / "report.txt").exists()


def test_text_report_header_names_the_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from graphguard._check import CheckResult, Target, render_text

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    text = render_text(CheckResult(Target(script="train.py")), ".")
    assert text.startswith("graphguard check (rank 1 of 2): train.py: no hazards found")
    monkeypatch.delenv("WORLD_SIZE")
    assert render_text(CheckResult(Target(script="train.py")), ".").startswith(
        "graphguard check: train.py"
    )


# --- without a process group ---------------------------------------------------------------------
def test_nothing_is_wrapped_without_a_process_group() -> None:
    """Zero cost outside a distributed job: the collectives stay torch's own functions."""
    assert not dist.is_initialized()
    originals = [vars(dist)["all_reduce"], vars(dist)["barrier"], vars(dist.Work)["wait"]]
    with graphguard.capture(mode="audit"):
        assert not _dist.initialized()
        now = [vars(dist)["all_reduce"], vars(dist)["barrier"], vars(dist.Work)["wait"]]
        assert all(a is b for a, b in zip(now, originals, strict=True))


def test_diagnostic_without_a_job_has_no_rank_fields() -> None:
    x = torch.ones(2, device=DEV)
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        x.sum().item()
    d = info.value.diagnostic
    assert d.rank is None and "rank" not in d.to_dict()
    assert "(rank" not in str(d).splitlines()[0]


def test_rank_fields_round_trip_through_the_check_channel() -> None:
    """A child rank's diagnostic crosses the check channel (JSON) with its rank fields."""
    x = torch.ones(2, device=DEV)
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        x.sum().item()
    import dataclasses

    d = dataclasses.replace(info.value.diagnostic, rank=3, local_rank=1, world_size=4)
    data = json.loads(json.dumps(d.to_dict()))
    assert (data["rank"], data["local_rank"], data["world_size"]) == (3, 1, 4)
    assert _diagnostic_from_dict(data) == d
    assert str(d).splitlines()[0].endswith("(rank 3 of 4, local rank 1)")


# --- the timeout setting ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "soon", True])
def test_dist_timeout_rejects_bad_values(bad: Any) -> None:
    with (
        pytest.raises(graphguard.ConfigError, match="allowed values"),
        graphguard.dist_timeout(bad),
    ):
        pass


def test_dist_timeout_sets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_dist.ENV_TIMEOUT, raising=False)
    assert _dist.current_timeout() == _dist.DEFAULT_TIMEOUT_S
    with graphguard.dist_timeout(2.5):
        assert _dist.current_timeout() == 2.5
        with graphguard.dist_timeout(None):
            assert _dist.current_timeout() is None
    assert _dist.current_timeout() == _dist.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), ("0.5", 0.5), ("off", None)])
def test_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float | None
) -> None:
    monkeypatch.setenv(_dist.ENV_TIMEOUT, value)
    assert _dist.current_timeout() == expected


@pytest.mark.parametrize("value", ["0", "-3", "never", "nan"])
def test_bad_timeout_in_the_environment_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(_dist.ENV_TIMEOUT, value)
    with pytest.raises(graphguard.ConfigError, match=_dist.ENV_TIMEOUT):
        _dist.current_timeout()


# --- the agreement protocol on a HashStore --------------------------------------------------------
@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(_dist, "_seen", {})
    monkeypatch.setattr(_dist, "_own_failures", set())
    return dist.HashStore()


def _agree(store: Any, **kw: Any) -> None:
    args: dict[str, Any] = {
        "window": (5, 5),
        "timeout": 5.0,
        "where": "before torch.distributed.all_reduce()",
        "label": "step",
    }
    args.update(kw)
    _dist.agree(store, 0, [0, 1], "c/g/5", "g", **args)


def _fail() -> Exception:
    try:
        raise ValueError("boom")
    except ValueError as e:
        return e


def test_agreement_passes_when_every_rank_arrived_and_cleans_up(store: Any) -> None:
    base = "graphguard/v1/c/g/5"
    store.set(f"{base}/1", "1")
    store.add(f"{base}/passed", 1)  # rank 1 already passed
    _agree(store)
    assert not store.check([f"{base}/0"]) and not store.check([f"{base}/1"])
    assert not store.check([f"{base}/passed"])


def test_agreement_raises_on_a_peer_failure_at_this_point(store: Any) -> None:
    _dist.post_failure(store, 1, _fail(), "step", {"g": 5}, ordinal=0)
    t0 = time.monotonic()
    with pytest.raises(graphguard.PeerFailedError) as info:
        _agree(store)
    assert time.monotonic() - t0 < 2.0
    err = info.value
    assert err.failed_rank == 1 and err.code is None
    assert "ValueError: boom" in str(err) and "test_distributed.py" in str(err)
    assert isinstance(err, graphguard.DistributedError)
    assert not store.check(["graphguard/v1/c/g/5/0"]), "the failed point's key was withdrawn"


def test_a_failure_outside_the_window_is_not_this_points(store: Any) -> None:
    """Rank 1 failed after passing collective 5 (seq 6): the point is not blocked by it, and
    a missing rank is named when the timeout runs out."""
    _dist.post_failure(store, 1, _fail(), "step", {"g": 6}, ordinal=0)
    with pytest.raises(graphguard.AgreementTimeoutError) as info:
        _agree(store, timeout=0.3)
    assert info.value.missing == [1]
    assert "rank(s) 1" in str(info.value)


def test_the_same_failure_on_both_ranks_is_not_reported_back(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ranks stopped at the same point of the same region: neither waits for the other."""
    monkeypatch.setattr(_dist, "_own_failures", {("g", 5, 0)})
    _dist.post_failure(store, 1, _fail(), "step", {"g": 5}, ordinal=0)
    with pytest.raises(graphguard.AgreementTimeoutError):
        _agree(store, timeout=0.2)


def test_a_failure_is_reported_once(store: Any) -> None:
    _dist.post_failure(store, 1, _fail(), "step", {"g": 5}, ordinal=0)
    with pytest.raises(graphguard.PeerFailedError):
        _agree(store)
    with pytest.raises(graphguard.AgreementTimeoutError):
        _agree(store, timeout=0.2)


def test_an_interrupt_stops_the_wait_at_a_region_end(store: Any) -> None:
    t0 = time.monotonic()
    _agree(store, pending=[int(signal.SIGINT)], exit_point=True)
    assert time.monotonic() - t0 < 1.0


def test_agreement_through_a_real_group_store(tmp_path: Path) -> None:
    """The protocol on a FileStore shared by two 'ranks' (threads): both pass, keys removed."""
    import threading

    path = str(tmp_path / "store")
    stores = [dist.FileStore(path, 2), dist.FileStore(path, 2)]
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            _dist.agree(
                stores[r], r, [0, 1], "x/g/3", "g", window=(1, 3), timeout=10, where="", label=None
            )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert not stores[0].check(["graphguard/v1/x/g/3/0"])


# --- GG803: which groups cannot be captured ---------------------------------------------------
class _CudaLooking(torch.Tensor):
    """A CPU tensor that says it is a CUDA tensor (this machine may have no GPU)."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


@pytest.mark.parametrize(
    ("backend", "code"),
    [("gloo", "GG803"), ("cpu:gloo", "GG803"), ("nccl", None), ("cpu:gloo,cuda:nccl", None)],
)
def test_uncapturable_group_needs_a_cuda_tensor_and_a_non_nccl_backend(
    monkeypatch: pytest.MonkeyPatch, backend: str, code: str | None
) -> None:
    monkeypatch.setattr(_dist, "_c10d", lambda: SimpleNamespace(get_backend=lambda g: backend))
    cuda = torch.Tensor._make_subclass(_CudaLooking, torch.zeros(2))
    finding = _dist._backend_finding("torch.distributed.all_reduce()", {"tensor": cuda}, None)
    assert (finding.code if finding else None) == code
    # A CPU tensor (what stands for a device tensor in audit) is never GG803.
    assert _dist._backend_finding("x", {"tensor": torch.zeros(2)}, None) is None


def test_collectives_of_a_discarded_capture_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture that failed recorded 2 collectives that never run: the shared sequence number
    goes back to where the region started, so the ranks' points line up again."""
    monkeypatch.setattr(_dist, "_discarded", {})
    group = SimpleNamespace(group_name="g", _get_sequence_number_for_group=lambda: 7)
    _dist._discard(_dist._Region(groups={"g": (group, 5)}))
    assert _dist._seq(group) == 5
    _dist._discard(_dist._Region(groups={"g": (group, 5)}))  # nothing recorded since: unchanged
    assert _dist._seq(group) == 5
