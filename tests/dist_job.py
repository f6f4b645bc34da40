"""One rank of the CPU distributed test job (gloo, audit mode), run by tests/test_distributed.py.

Launched with ``python -m torch.distributed.run --standalone --nproc-per-node 2 dist_job.py
OUT_DIR``. Each scenario writes one JSON line per rank to ``OUT_DIR/res.<rank>.jsonl``; lines
marked ``# at:NAME`` are the hazard lines the test expects diagnostics to name. graphguard's
JSON log lines go to ``OUT_DIR/log.<rank>.jsonl``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

import graphguard
from graphguard._sarif import build_sarif

OUT = sys.argv[1]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
RANK = dist.get_rank()
graphguard.enable_json_logs(os.path.join(OUT, f"log.{RANK}.jsonl"))


RESULTS = open(os.path.join(OUT, f"res.{RANK}.jsonl"), "w", encoding="utf-8")  # noqa: SIM115


def emit(case: str, **fields: Any) -> None:
    RESULTS.write(json.dumps({"case": case, "rank": RANK, **fields}, sort_keys=True) + "\n")
    RESULTS.flush()


def outcome(case: str, body: Any) -> None:
    """Run ``body``; emit what it raised (class, code, line, rank tags) and how long it took."""
    t0 = time.monotonic()
    try:
        value = body()
    except Exception as e:
        d = getattr(e, "diagnostic", None)
        fields: dict[str, Any] = {
            "error": type(e).__name__,
            "message": str(e),
            "seconds": time.monotonic() - t0,
        }
        if d is not None:
            fields.update(
                code=d.code,
                lineno=d.lineno,
                diag_rank=d.rank,
                diag_local_rank=d.local_rank,
                diag_world_size=d.world_size,
                text=str(d),
                sarif=build_sarif([(d, 1)], project_root=OUT, version="0")["runs"][0]["results"][0][
                    "properties"
                ],
            )
        record = getattr(e, "record", None)
        if record is not None:
            fields.update(failed_rank=e.failed_rank, failed_code=e.code, record=record)
        missing = getattr(e, "missing", None)
        if missing is not None:
            fields.update(missing=missing)
        emit(case, **fields)
        return
    except BaseException:  # pragma: no cover - shown in the job's output
        traceback.print_exc()
        raise
    emit(case, error=None, value=value, seconds=time.monotonic() - t0)


x = torch.full((4,), float(RANK + 1))


def barrier() -> None:
    with graphguard.capture(mode="audit"):
        dist.barrier()  # at:barrier


def monitored_barrier() -> None:
    with graphguard.capture(mode="audit"):
        dist.monitored_barrier()  # at:monitored_barrier


def all_gather_object() -> None:
    objs: list[Any] = [None, None]
    with graphguard.capture(mode="audit"):
        dist.all_gather_object(objs, {"rank": RANK})  # at:all_gather_object


def broadcast_object_list() -> None:
    objs: list[Any] = [RANK]
    with graphguard.capture(mode="audit"):
        dist.broadcast_object_list(objs, src=0)  # at:broadcast_object_list


def all_reduce() -> list[float]:
    t = x.clone()
    with graphguard.capture(mode="audit") as cap:
        dist.all_reduce(t)
    assert cap.hazards == []
    return t.tolist()


def all_reduce_async_wait() -> list[float]:
    t = x.clone()
    with graphguard.capture(mode="audit") as cap:
        work = dist.all_reduce(t, async_op=True)
        work.wait()
    assert cap.hazards == []
    return t.tolist()


def wait_with_timeout() -> None:
    t = x.clone()
    with graphguard.capture(mode="audit"):
        work = dist.all_reduce(t, async_op=True)
        work.wait(datetime.timedelta(seconds=5))  # at:wait_timeout


def is_completed() -> None:
    t = x.clone()
    with graphguard.capture(mode="audit"):
        work = dist.all_reduce(t, async_op=True)
        work.is_completed()  # at:is_completed


def blocking_wait() -> None:
    t = x.clone()
    os.environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"
    try:
        with graphguard.capture(mode="audit"):
            work = dist.all_reduce(t, async_op=True)
            work.wait()  # at:blocking_wait
    finally:
        del os.environ["TORCH_NCCL_BLOCKING_WAIT"]


@graphguard.guard(label="guarded step")
def guarded_step(t: torch.Tensor) -> torch.Tensor:
    y = t * 2
    if RANK == 1:
        y.sum().item()  # at:one_rank_item
    dist.all_reduce(y)  # at:one_rank_all_reduce
    return y


def one_rank_hazard() -> None:
    guarded_step(x.clone())


def capture_one_rank_hazard() -> None:
    with graphguard.capture(mode="audit", label="step"):
        y = x * 3
        if RANK == 0:
            float(y.sum())  # at:capture_one_rank
        dist.all_reduce(y)


def warn_barrier() -> int:
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        dist.barrier()  # at:warn_barrier
    return len(cap.hazards)


def late_rank() -> None:
    # Rank 1 never enters the region: rank 0 waits at its collective for the timeout only.
    if RANK == 0:
        with graphguard.dist_timeout(1.5), graphguard.capture(mode="audit"):
            dist.all_reduce(x.clone())


ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
ddp_in = torch.randn(3, 4, generator=torch.Generator().manual_seed(RANK))


def ddp_iteration() -> None:
    ddp(ddp_in).sum().backward()  # at:ddp_forward


def ddp_before_warm_up() -> None:
    for _ in range(3):
        ddp_iteration()
    with graphguard.capture(mode="audit"):
        ddp_iteration()


def ddp_after_warm_up() -> int:
    for _ in range(8):  # 3 + 8 = 11 eager iterations
        ddp_iteration()
    with graphguard.capture(mode="audit") as cap:
        ddp_iteration()
    return len(cap.hazards)


def _fsdp2_twin() -> tuple[Any, Any]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)  # the same weights on both ranks and for both twins
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def fsdp2_step_audited() -> dict[str, Any]:
    """An FSDP2 (fully_shard) training step audited on gloo, and its unguarded twin."""
    guarded, plain = _fsdp2_twin(), _fsdp2_twin()
    batch = torch.randn(8, 16, generator=torch.Generator().manual_seed(RANK))

    def step(model: Any, opt: Any) -> None:
        model(batch).square().mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step(*guarded)
        step(*plain)
    with graphguard.capture(mode="audit") as cap:
        step(*guarded)
    step(*plain)
    same = all(
        torch.equal(a.full_tensor(), b.full_tensor())
        for a, b in zip(guarded[0].parameters(), plain[0].parameters(), strict=True)
    )
    return {"hazards": len(cap.hazards), "same_parameters": same}


def alive_after() -> list[float]:
    t = torch.ones(2)
    dist.all_reduce(t)
    return t.tolist()


for name, fn in [
    ("barrier", barrier),
    ("monitored_barrier", monitored_barrier),
    ("all_gather_object", all_gather_object),
    ("broadcast_object_list", broadcast_object_list),
    ("all_reduce", all_reduce),
    ("all_reduce_async_wait", all_reduce_async_wait),
    ("wait_timeout", wait_with_timeout),
    ("is_completed", is_completed),
    ("blocking_wait", blocking_wait),
    ("one_rank_hazard", one_rank_hazard),
    ("all_reduce_after_one_rank", all_reduce),
    ("capture_one_rank", capture_one_rank_hazard),
    ("warn_barrier", warn_barrier),
    ("late_rank", late_rank),
    ("ddp_before_warm_up", ddp_before_warm_up),
    ("ddp_after_warm_up", ddp_after_warm_up),
    ("fsdp2_step_audited", fsdp2_step_audited),
    ("alive_after", alive_after),
]:
    outcome(name, fn)

RESULTS.close()
graphguard.disable_json_logs()
sys.stdout.flush()
sys.stderr.flush()
# Every result is written. Leave without the C++ teardown: destroying the process group while
# the DDP module and asynchronous works are still referenced aborted a rank at exit about once in
# twenty runs ("terminate called without an active exception"), after all of its results.
os._exit(0)
