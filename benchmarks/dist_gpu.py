"""graphguard under torchrun on 2 GPUs (NCCL): the distributed hazard table, rerun with graphguard.

usage:  python benchmarks/dist_gpu.py --out benchmarks/results/dist-gpu.md [--cases a,b] [--json F]
        python benchmarks/dist_gpu.py --raw --out benchmarks/results/dist-gpu-raw.md

With ``--raw`` every case runs under plain ``torch.cuda.graph`` instead (no graphguard): the
ground truth the rule pages cite, recorded as what happened on each rank (captured and replayed,
or the error torch raised), whether the process still works afterwards, and whether the job hung.

The driver runs every case as its own 2-rank ``torch.distributed.run`` job (a case that poisons
its processes cannot spoil the next one), kills a job that outlives ``--case-timeout`` (a hang is
itself an outcome), and writes a markdown table. Each rank runs the case inside
``graphguard.capture(mode="capture")`` and records what happened to ``<dir>/<case>.<rank>.json``:

- hazard rows: the hazard's code and line on every rank (the line must be the case's
  ``# at:`` line), or for the one-rank hazard, GG101 on rank 1 and ``PeerFailedError`` naming rank
  1 on rank 0 within the agreement timeout;
- legal rows: no hazard, and replays (three, inputs refilled before each) equal to the expected
  values;
- DDP and FSDP2 rows: a training step (forward, backward, SGD) captured, replayed once and
  compared with the same step run eagerly from the same parameters (DDP built on a side stream,
  11 warm-ups, async error handling off, as PyTorch's notes ask); the DDP row without those
  preconditions (3 warm-ups) must be GG805 at the model call on both ranks;
- every row: whether the process still runs CUDA work and an eager NCCL all_reduce afterwards.

Needs 2 GPUs, torch with NCCL, and the repository on ``PYTHONPATH`` (the driver sets it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()

#: case -> (expectation, expected code on rank 0, on rank 1). "legal": no hazard, replay equal.
CASES: dict[str, tuple[str, str | None, str | None]] = {
    "all_reduce": ("legal", None, None),
    "all_reduce_async_wait": ("legal", None, None),
    "all_gather_into_tensor": ("legal", None, None),
    "reduce_scatter_tensor": ("legal", None, None),
    "broadcast": ("legal", None, None),
    "send_recv": ("measure", None, None),
    "barrier": ("hazard", "GG801", "GG801"),
    "gloo_group_cuda_tensor": ("hazard", "GG803", "GG803"),
    "all_gather_object": ("hazard", "GG802", "GG802"),
    "broadcast_object_list": ("hazard", "GG802", "GG802"),
    "work_is_completed": ("hazard", "GG804", "GG804"),
    "item_on_rank1": ("one-rank", "PeerFailedError", "GG101"),
    "ddp_step": ("train", None, None),
    "ddp_step_no_preconditions": ("hazard", "GG805", "GG805"),
    "fsdp2_step": ("train", None, None),
}
AGREEMENT_TIMEOUT_S = 20.0
_COLLECTIVE_ROWS = {
    "all_reduce", "all_reduce_async_wait", "all_gather_into_tensor", "reduce_scatter_tensor",
    "broadcast", "send_recv",
}  # fmt: skip


# --- the driver -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_case(case: str, folder: Path, limit: float, raw: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        str(HERE), "--rank-case", case, "--dir", str(folder), *(["--raw"] if raw else []),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=limit)
        rc: Any = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the job this driver started, by its group id
        out, _ = proc.communicate()
        rc = "HANG"
    ranks = []
    for rank in (0, 1):
        path = folder / f"{case}.{rank}.json"
        ranks.append(json.loads(path.read_text()) if path.exists() else None)
    return {
        "case": case,
        "rc": rc,
        "seconds": round(time.monotonic() - t0, 1),
        "ranks": ranks,
        "tail": out[-1500:],
    }


def verdict(row: dict[str, Any], raw: bool = False) -> str:
    kind, want0, want1 = CASES[row["case"]]
    r = row["ranks"]
    if raw:  # ground truth: what torch did, not a pass or fail
        if row["rc"] == "HANG":
            return "hung (killed)"
        alive = all(
            x is not None and x.get("alive") is True and x.get("collective_after") == 2.0 for x in r
        )
        return "process usable after" if alive else "process NOT usable after"
    if row["rc"] == "HANG" or None in r:
        return "FAIL (hang or crash)"
    alive = all(x.get("alive") is True and x.get("collective_after") == 2.0 for x in r)
    if kind == "legal" or kind == "train":
        ok = all(x["outcome"] == "captured+replayed" and x.get("replay_ok") for x in r)
    elif kind == "hazard":
        ok = all(
            x.get("code") == want and x.get("lineno") == x.get("expected_line")
            for x, want in zip(r, (want0, want1), strict=True)
        )
    elif kind == "one-rank":
        ok = (
            r[1].get("code") == want1
            and r[1].get("lineno") == r[1].get("expected_line")
            and r[0].get("error") == want0
            and r[0].get("failed_rank") == 1
            and r[0].get("failed_line") == r[1].get("expected_line")
            and r[0].get("seconds", 1e9) < AGREEMENT_TIMEOUT_S
        )
    else:
        return "measured" + ("" if alive else ", process not usable after")
    if not alive:
        return "FAIL (process not usable after)"
    return "PASS" if ok else "FAIL"


def _cell(x: dict[str, Any] | None) -> str:
    if x is None:
        return "no result"
    text = x["outcome"]
    if x.get("lineno") is not None:
        text += f" at line {x['lineno']}" + (
            "" if x.get("lineno") == x.get("expected_line") else f" (expected {x['expected_line']})"
        )
    if x.get("failed_rank") is not None:
        text += f", names rank {x['failed_rank']} line {x.get('failed_line')}"
    if x.get("seconds") is not None and x["outcome"].startswith(("peer", "hazard")):
        text += f", {x['seconds']:.2f} s"
    if x.get("replay_ok") is not None:
        text += ", replays equal expected" if x["replay_ok"] else ", replay NOT equal expected"
    if x.get("hazards"):
        text += f", hazards {x['hazards']}"
    if x.get("max_abs_diff") is not None:
        text += f", max abs diff vs eager {x['max_abs_diff']:.2e}"
    if x.get("message") and not x["outcome"].startswith(("hazard", "captured")):
        text += f": {x['message'][:160]}"
    text += "; alive" if x.get("alive") is True else f"; NOT alive ({x.get('alive')})"
    return text.replace("|", "\\|").replace("\n", " ")


def driver(args: argparse.Namespace) -> int:
    import torch

    names = args.cases.split(",") if args.cases else list(CASES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphguard-dist-") as tmp:
        for case in names:
            row = run_case(case, Path(tmp), args.case_timeout, raw=args.raw)
            row["verdict"] = verdict(row, raw=args.raw)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("case", "rc", "seconds", "verdict")}), flush=True)
            if row["verdict"].startswith("FAIL"):
                print(row["tail"], flush=True)
    lines = [
        "# raw torch.cuda.graph capture under torchrun, 2 GPUs (NCCL), no graphguard"
        if args.raw
        else "# graphguard under torchrun, 2 GPUs (NCCL)",
        "",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL "
        f"{'.'.join(map(str, torch.cuda.nccl.version()))}, "
        f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        + (
            "Each case is its own 2-rank job inside plain `torch.cuda.graph`; "
            f"a job is killed after {args.case_timeout:g} s. Produced by "
            "`benchmarks/dist_gpu.py --raw`."
            if args.raw
            else "Each case is its own 2-rank job inside `graphguard.capture(mode='capture')`; "
            f"agreement timeout {AGREEMENT_TIMEOUT_S:g} s. Produced by `benchmarks/dist_gpu.py`."
        ),
        "",
        "| case | expected | rank 0 | rank 1 | job s | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        kind, w0, w1 = CASES[row["case"]]
        expected = kind if w0 is None else f"{kind}: {w0} / {w1}"
        lines.append(
            f"| `{row['case']}` | {expected} | {_cell(row['ranks'][0])} | {_cell(row['ranks'][1])} "
            f"| {row['seconds']} | {row['verdict']} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))
    return 0 if args.raw or not any(r["verdict"].startswith("FAIL") for r in rows) else 1


# --- one rank ---------------------------------------------------------------------------------
def _marker(name: str) -> int:
    for number, line in enumerate(HERE.read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# at:{name}"):
            return number
    raise AssertionError(name)


class _RawCapture:
    """``torch.cuda.graph`` with the parts of graphguard's capture object the cases use."""

    def __init__(self) -> None:
        import torch

        self.graph = torch.cuda.CUDAGraph()
        self._ctx = torch.cuda.graph(self.graph)
        self.hazards: list[Any] = []

    def __enter__(self) -> _RawCapture:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._ctx.__exit__(*exc)

    def replay(self) -> None:
        self.graph.replay()


def rank_main(case: str, folder: Path, raw: bool = False) -> None:
    if case.startswith(("ddp_step", "fsdp2")) and case != "ddp_step_no_preconditions":
        # PyTorch's notes on DDP under CUDA graphs: async error handling off, before init.
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
        os.environ["NCCL_ASYNC_ERROR_HANDLING"] = "0"
    import torch
    import torch.distributed as dist

    import graphguard

    def region(label: str) -> Any:
        return _RawCapture() if raw else graphguard.capture(mode="capture", label=label)

    rank = int(os.environ["RANK"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dev = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=60), device_id=dev)
    res: dict[str, Any] = {"rank": rank, "case": case}
    # Communicators are created lazily: one eager collective before anything is captured.
    warm = torch.ones(1, device=dev)
    dist.all_reduce(warm)
    torch.cuda.synchronize()

    def body_and_check() -> tuple[Any, Any, Any]:
        """(prepare, body, check) for the case: prepare refills inputs, check -> (ok, detail)."""
        n = 1024
        x = torch.empty(n, device=dev)

        def refill() -> None:
            x.fill_(float(rank + 1))

        if case == "all_reduce":
            return refill, lambda: dist.all_reduce(x), lambda: bool((x == 3.0).all())
        if case == "all_reduce_async_wait":

            def body() -> None:
                work = dist.all_reduce(x, async_op=True)
                work.wait()

            return refill, body, lambda: bool((x == 3.0).all())
        if case == "all_gather_into_tensor":
            out = torch.empty(2 * n, device=dev)
            return (
                refill,
                lambda: dist.all_gather_into_tensor(out, x),
                lambda: bool((out[:n] == 1.0).all() and (out[n:] == 2.0).all()),
            )
        if case == "reduce_scatter_tensor":
            big = torch.empty(2 * n, device=dev)
            out = torch.empty(n, device=dev)
            return (
                lambda: big.fill_(float(rank + 1)),
                lambda: dist.reduce_scatter_tensor(out, big),
                lambda: bool((out == 3.0).all()),
            )
        if case == "broadcast":
            return refill, lambda: dist.broadcast(x, src=0), lambda: bool((x == 1.0).all())
        if case == "send_recv":

            def p2p() -> None:
                if rank == 0:
                    dist.send(x, dst=1)
                else:
                    dist.recv(x, src=0)

            return refill, p2p, lambda: bool((x == 1.0).all())
        raise KeyError(case)

    def alive() -> None:
        try:
            torch.randn(8, device=dev).sum().item()
            res["alive"] = True
        except Exception as e:
            res["alive"] = repr(e)[:160]
        try:
            t = torch.ones(1, device=dev)
            dist.all_reduce(t)
            torch.cuda.synchronize()
            res["collective_after"] = t.item()
        except Exception as e:
            res["collective_after"] = repr(e)[:160]

    def record_error(e: BaseException, t0: float) -> None:
        d = getattr(e, "diagnostic", None)
        res["seconds"] = time.monotonic() - t0
        res["error"] = type(e).__name__
        res["message"] = str(e).splitlines()[0][:300] if str(e) else ""
        if d is not None:
            res["outcome"] = f"hazard:{d.kind}:{d.code}"
            res.update(code=d.code, lineno=d.lineno, diag_rank=d.rank, world_size=d.world_size)
        elif getattr(e, "record", None) is not None:
            res["outcome"] = f"peer-failed:{e.failed_rank}:{e.code}"  # type: ignore[attr-defined]
            res.update(failed_rank=e.failed_rank, failed_line=e.record.get("lineno"))  # type: ignore[attr-defined]
        else:
            res["outcome"] = f"error:{type(e).__name__}"
            res["traceback"] = traceback.format_exc()[-1500:]

    expected = {
        "barrier": "barrier",
        "gloo_group_cuda_tensor": "gloo",
        "all_gather_object": "all_gather_object",
        "broadcast_object_list": "broadcast_object_list",
        "work_is_completed": "is_completed",
        "item_on_rank1": "item_on_rank1",
        "ddp_step_no_preconditions": "ddp_forward",
    }
    if case in expected:
        res["expected_line"] = _marker(expected[case])
    gloo = dist.new_group(backend="gloo") if case == "gloo_group_cuda_tensor" else None
    x = torch.full((1024,), float(rank + 1), device=dev)
    t0 = time.monotonic()
    try:
        with contextlib.nullcontext() if raw else graphguard.dist_timeout(AGREEMENT_TIMEOUT_S):
            if case in _COLLECTIVE_ROWS:
                prepare, body, check = body_and_check()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        prepare()
                        body()
                torch.cuda.current_stream().wait_stream(side)
                torch.cuda.synchronize()
                prepare()
                with region(case) as cap:
                    body()
                res["hazards"] = [d.code for d in cap.hazards]
                oks = []
                for _ in range(3):
                    prepare()
                    cap.replay()
                    torch.cuda.synchronize()
                    oks.append(check())
                res["replay_ok"] = all(oks) and not cap.hazards
                res["outcome"] = "captured+replayed"
            elif case == "barrier":
                with region(case):
                    x.mul_(2)
                    dist.barrier()  # at:barrier
            elif case == "gloo_group_cuda_tensor":
                with region(case):
                    dist.all_reduce(x, group=gloo)  # at:gloo
            elif case == "all_gather_object":
                objs: list[Any] = [None, None]
                with region(case):
                    dist.all_gather_object(objs, {"rank": rank})  # at:all_gather_object
            elif case == "broadcast_object_list":
                objs = [rank]
                with region(case):
                    dist.broadcast_object_list(objs, src=0)  # at:broadcast_object_list
            elif case == "work_is_completed":
                with region(case):
                    work = dist.all_reduce(x, async_op=True)
                    work.is_completed()  # at:is_completed
            elif case == "item_on_rank1":
                with region(case):
                    y = x * 2
                    if rank == 1:
                        y.sum().item()  # at:item_on_rank1
                    dist.all_reduce(y)
            elif case.startswith("ddp_step"):
                train_step(res, dev, ddp=True, preconditions=case == "ddp_step", region=region)
            elif case == "fsdp2_step":
                train_step(res, dev, ddp=False, preconditions=True, region=region)
            else:
                raise KeyError(case)
            res.setdefault("outcome", "no hazard")
    except Exception as e:
        record_error(e, t0)
    alive()
    (folder / f"{case}.{rank}.json").write_text(json.dumps(res, default=str))
    sys.stdout.flush()
    sys.stderr.flush()
    # NCCL teardown after a captured collective can block; the outcome is already written.
    os._exit(0)


def train_step(
    res: dict[str, Any], dev: Any, *, ddp: bool, preconditions: bool, region: Any
) -> None:
    """Capture forward + backward + SGD of a DDP (or FSDP2) model; compare one replay with the
    same step run eagerly from the same parameters."""
    import torch
    import torch.distributed as dist

    torch.manual_seed(0)  # the same initial weights on every rank
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)
    ).to(dev)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    ctx = torch.cuda.stream(side) if preconditions else contextlib.nullcontext()
    with ctx:  # PyTorch's notes: construct DDP in a side-stream context before capture
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model: Any = DDP(net, device_ids=[dev.index])
        else:
            from torch.distributed.fsdp import fully_shard

            model = fully_shard(net, reshard_after_forward=False)
    torch.cuda.current_stream().wait_stream(side)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator(device=dev).manual_seed(1 + dist.get_rank())
    xin = torch.randn(32, 64, device=dev, generator=gen)
    yin = torch.randn(32, 1, device=dev, generator=gen)
    loss_out = torch.zeros((), device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(xin), yin)  # at:ddp_forward
        loss.backward()
        opt.step()
        loss_out.copy_(loss.detach())

    warmups = 11 if preconditions else 3  # PyTorch's notes: at least 11 eager DDP iterations
    res["warmups"] = warmups
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    with region("ddp" if ddp else "fsdp2") as cap:
        step()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    cap.replay()
    torch.cuda.synchronize()
    replayed = [p.detach().clone() for p in params]
    loss_replayed = loss_out.clone()
    with torch.no_grad():
        for p, b in zip(params, before, strict=True):
            p.copy_(b)
    step()  # the same step, eagerly, from the same parameters and inputs
    torch.cuda.synchronize()
    diffs = [
        (_full(r) - _full(p.detach())).abs().max().item()
        for r, p in zip(replayed, params, strict=True)
    ]
    res["max_abs_diff"] = max([*diffs, (loss_replayed - loss_out).abs().item()])
    res["replay_ok"] = res["max_abs_diff"] <= 1e-5 and not cap.hazards
    res["hazards"] = [d.code for d in cap.hazards]
    res["outcome"] = "captured+replayed"


def _full(t: Any) -> Any:
    """A DTensor (FSDP2 parameter) gathered whole; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/dist-gpu.md")
    parser.add_argument("--json", default=None, help="also write every rank's record here")
    parser.add_argument("--cases", default="", help="comma-separated subset of: " + ",".join(CASES))
    parser.add_argument("--case-timeout", type=float, default=150.0)
    parser.add_argument(
        "--raw", action="store_true", help="plain torch.cuda.graph instead of graphguard"
    )
    parser.add_argument("--rank-case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_case is not None:
        rank_main(args.rank_case, Path(args.dir), raw=args.raw)
        return 0
    return driver(args)


if __name__ == "__main__":
    raise SystemExit(main())
