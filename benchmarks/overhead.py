"""What graphguard costs: every row of the overhead table, measured side by side in one run.

CPU rows (any machine; ``--cpu`` runs only these, in well under a minute):

- audit with quiet logs (CPU tensors stand for device tensors): an MLP 256x256 step and a small
  DSA indexer step, each plainly and inside ``graphguard.capture(mode="audit")``, alternated;
- an empty region, entered and left;
- the first region of a fresh process, beyond ``import torch`` and ``import graphguard``;
- the first audit region of a 2-rank gloo job under torchrun (one ``all_reduce``).

GPU rows (a CUDA machine; run without ``--cpu``; the CPU rows follow in the same table):

- ``graphguard.capture()`` vs a raw ``torch.cuda.graph`` of the same step (MLP+attention block
  fwd+bwd; DSA index-mask step, B=4, L=8192);
- ``cap.replay()`` vs ``graph.replay()`` (device time per replay, host time per call);
- an eager step inside ``graphguard.capture(mode="audit")`` vs plain eager;
- the first capture region of a fresh process, vs a raw capture of the same warmed-up step;
- on a machine with two GPUs: the first capture region of a 2-rank NCCL job (one
  ``all_reduce``), vs a raw capture of it.

The CPU rows always run in a child process that sees no CUDA device (``CUDA_VISIBLE_DEVICES=``),
so on a GPU machine they measure the same emulated audit as on a CPU-only one. Both sides of a
ratio run in the same process, alternated round by round; each figure is the median over rounds
of the median over the calls of a round. CPU steps run with one intra-op thread and are timed in
CPU time of that thread (``time.thread_time``), so a shared machine's other load neither turns
into thread contention inside the step nor counts as the step's time; the first-region rows and
all GPU rows use the wall clock. Usage:

    python benchmarks/overhead.py --cpu [--out FILE]
    python benchmarks/overhead.py [--out FILE] [--reps N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def first_region_child() -> dict[str, float]:
    """In a fresh process: import times, then the first audit region (around one warm op)."""
    began = time.perf_counter()
    import torch as torch_module

    imported_torch = time.perf_counter()
    import graphguard

    imported = time.perf_counter()
    x = torch_module.ones(4)
    x.add_(1)  # torch's own first-call work happens here, outside the timing
    region_began = time.perf_counter()
    with graphguard.capture(mode="audit"):
        x.add_(1)
    first = time.perf_counter() - region_began
    second_began = time.perf_counter()
    with graphguard.capture(mode="audit"):
        x.add_(1)
    second = time.perf_counter() - second_began
    return {
        "import_torch_s": imported_torch - began,
        "import_graphguard_s": imported - imported_torch,
        "first_region_s": first,
        "second_region_s": second,
    }


if __name__ == "__main__" and "--first-region-child" in sys.argv:
    # Before this file imports torch: the child times ``import torch`` itself.
    print(json.dumps(first_region_child()))
    raise SystemExit(0)

import torch  # noqa: E402

# --- the steps --------------------------------------------------------------------------------
DSA_SMALL = {"B": 2, "H": 16, "D": 64, "L": 2048, "k": 128}


def mlp_block(dev: str) -> tuple[Callable[[], Any], str]:
    torch.manual_seed(0)
    d = 256
    attn = torch.nn.MultiheadAttention(d, 4, batch_first=True).to(dev)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d)
    ).to(dev)
    norm = torch.nn.LayerNorm(d).to(dev)
    x = torch.randn(8, 64, d, device=dev)

    def step() -> Any:
        h = norm(x)
        h = h + attn(h, h, h, need_weights=False)[0]
        out = h + mlp(norm(h))
        out.sum().backward()
        return out

    return step, "MLP+attention fwd+bwd (B=8, S=64, d=256)"


def dsa_like(dev: str) -> tuple[Callable[[], Any], str]:
    import dsa

    B, H, D, L, k = 4, 64, 128, 8192, 2048
    q = torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(B, L, D, device=dev, dtype=torch.bfloat16)
    w = torch.randn(B, 1, H, device=dev)
    lens = torch.full((B,), L, device=dev)
    mask = torch.empty(B, 1, L, device=dev)
    indexer = dsa.DSAIndexer(H, D, k)

    def step() -> Any:
        return indexer(q, kc, w, lens, mask)

    return step, f"DSA index-mask step (B={B}, L={L}, H={H}, D={D}, k={k})"


def mlp_cpu() -> tuple[Callable[[], Any], str]:
    torch.manual_seed(0)
    d, batch = 256, 64
    mlp = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, d))
    x = torch.randn(batch, d)

    def step() -> Any:
        out = mlp(x)
        out.sum().backward()
        return out

    return step, f"MLP 256x256 fwd+bwd (2 layers, batch {batch})"


def dsa_small() -> tuple[Callable[[], Any], str]:
    import dsa

    s = DSA_SMALL
    g = torch.Generator().manual_seed(0)
    q = torch.randn(s["B"], 1, s["H"], s["D"], generator=g)
    kc = torch.randn(s["B"], s["L"], s["D"], generator=g)
    w = torch.randn(s["B"], 1, s["H"], generator=g)
    lens = torch.full((s["B"],), s["L"])
    mask = torch.empty(s["B"], 1, s["L"])
    indexer = dsa.DSAIndexer(s["H"], s["D"], s["k"])

    def step() -> Any:
        return indexer(q, kc, w, lens, mask)

    shape = ", ".join(f"{k}={v}" for k, v in s.items())
    return step, f"DSA indexer step, small shape ({shape})"


# --- timing -----------------------------------------------------------------------------------
def _round(fn: Callable[[], Any], calls: int) -> float:
    """Median seconds of one call over ``calls`` calls, in CPU time of this thread.

    The CPU rows run on one thread with no device, so the thread's CPU time is the work done;
    unlike the wall clock, it does not count the time another process held the core.
    """
    clock = time.thread_time
    times = []
    for _ in range(calls):
        began = clock()
        fn()
        times.append(clock() - began)
    return statistics.median(times)


def side_by_side(*sides: Callable[[], Any], rounds: int, calls: int) -> list[float]:
    """Median over alternated rounds of each side's per-call median, in µs."""
    for _ in range(5):
        for fn in sides:
            fn()
    gc.collect()
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(rounds):
        for fn, bucket in zip(sides, times, strict=True):
            bucket.append(_round(fn, calls))
    return [statistics.median(bucket) * 1e6 for bucket in times]


def _bare_mode(step: Callable[[], Any]) -> Callable[[], Any]:
    """The step under a torch-function mode that only forwards each call: the floor of any
    interception through ``__torch_function__`` (reference, not a goal)."""
    from torch.overrides import TorchFunctionMode

    class Forward(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            return func(*args, **(kwargs or {}))

    def run() -> Any:
        with Forward():
            return step()

    return run


def _quiet_logs() -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only


# --- CPU rows (in a child that sees no CUDA) ----------------------------------------------------
def cpu_rows(rounds: int) -> dict[str, Any]:
    import graphguard

    torch.set_num_threads(1)
    _quiet_logs()
    if torch.cuda.is_available():
        raise SystemExit("the CPU rows must run where torch sees no CUDA device")

    def audited(step: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with graphguard.capture(mode="audit"):
                return step()

        return run

    out: dict[str, Any] = {}
    for key, make in (("mlp", mlp_cpu), ("dsa", dsa_small)):
        step, name = make()
        plain_us, mode_us, audit_us = side_by_side(
            step, _bare_mode(step), audited(step), rounds=rounds, calls=40
        )
        out[key] = {
            "step": name,
            "plain_us": plain_us,
            "bare_mode_us": mode_us,
            "audit_us": audit_us,
            "calls": _count_torch_calls(step),
        }

    def empty() -> None:
        with graphguard.capture(mode="audit"):
            pass

    def nothing() -> None:
        pass

    _, empty_us = side_by_side(nothing, empty, rounds=rounds, calls=400)
    out["empty_us"] = empty_us
    return out


def _count_torch_calls(step: Callable[[], Any]) -> int:
    """How many torch calls a torch-function mode sees in one step (for the notes)."""
    from torch.overrides import TorchFunctionMode

    seen = [0]

    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            seen[0] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return seen[0]


def _child(args: list[str], *, hide_cuda: bool) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if hide_cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_region(processes: int) -> dict[str, float]:
    runs = [_child(["--first-region-child"], hide_cuda=True) for _ in range(processes)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# --- GPU rows -----------------------------------------------------------------------------------
def measure_gpu(make: Callable[[str], tuple[Callable[[], Any], str]], reps: int) -> dict[str, Any]:
    import graphguard
    from benchmarks._timing import median_time, warm_up

    def host_time(fn: Callable[[], Any], n: int) -> float:
        return median_time(fn, reps=n, clock="host") * 1e6

    step, name = make("cuda")
    warm_up(step, 3)
    torch.cuda.synchronize()
    res: dict[str, Any] = {"step": name}

    def raw_capture() -> Any:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        return g

    def gg_capture() -> Any:
        with graphguard.capture() as cap:
            step()
        return cap

    for _ in range(2):
        raw_capture()
        gg_capture()
    gc.collect()
    raw_c, gg_c = [], []
    for _ in range(max(reps // 4, 1)):  # alternated, so drift hits both sides alike
        raw_c.append(host_time(raw_capture, 1))
        gg_c.append(host_time(gg_capture, 1))
    res["capture_raw_us"] = statistics.median(raw_c)
    res["capture_gg_us"] = statistics.median(gg_c)

    g = raw_capture()
    cap = gg_capture()
    n = 200
    for _ in range(3):
        median_time(g.replay, reps=1, calls=20)
        median_time(cap.replay, reps=1, calls=20)
    raw_r, gg_r, raw_h, gg_h = [], [], [], []
    for _ in range(5):
        raw_r.append(median_time(g.replay, reps=3, calls=n) * 1e6)
        gg_r.append(median_time(cap.replay, reps=3, calls=n) * 1e6)
        raw_h.append(median_time(g.replay, reps=3, calls=n, clock="host", wait=False) * 1e6)
        gg_h.append(median_time(cap.replay, reps=3, calls=n, clock="host", wait=False) * 1e6)
    res["replay_raw_us"] = statistics.median(raw_r)
    res["replay_gg_us"] = statistics.median(gg_r)
    res["replay_host_raw_us"] = statistics.median(raw_h)
    res["replay_host_gg_us"] = statistics.median(gg_h)

    def audited() -> Any:
        with graphguard.capture(mode="audit"):
            return step()

    plain_e, audit_e = [], []
    for _ in range(max(reps // 10, 1)):
        plain_e.append(host_time(step, 10))
        audit_e.append(host_time(audited, 10))
    res["eager_us"] = statistics.median(plain_e)
    res["audit_us"] = statistics.median(audit_e)
    return res


def first_capture_child() -> dict[str, float]:
    """In a fresh process on the GPU: a raw capture of a warmed-up step, then graphguard's first."""
    import graphguard
    from benchmarks._timing import warm_up

    _quiet_logs()
    step, _ = mlp_block("cuda")
    warm_up(step, 3)
    torch.cuda.synchronize()

    def raw() -> float:
        began = time.perf_counter()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        torch.cuda.synchronize()
        return time.perf_counter() - began

    raw()  # the process's first capture: CUDA's own lazy set-up, outside the comparison
    raw_s = raw()
    began = time.perf_counter()
    with graphguard.capture():
        step()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - began
    return {"raw_capture_s": raw_s, "first_gg_capture_s": first_s}


def dist_first_region_child(out_dir: str) -> None:
    """One rank of a 2-rank job, around one all_reduce: on the CPU (gloo) the first and second
    audit regions; on two GPUs (NCCL) a raw capture, then graphguard's first and second capture
    regions (each after the step was warmed up on a side stream)."""
    import datetime

    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    rank = int(os.environ["RANK"])
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=60))
    import graphguard

    _quiet_logs()
    x = torch.ones(4, device="cuda" if cuda else "cpu")
    dist.all_reduce(x)  # the group's own first-call work, outside the timing
    result: dict[str, Any] = {}
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                dist.all_reduce(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        result["raw_capture_s"] = time.perf_counter() - began
    times = []
    for _ in range(2):
        began = time.perf_counter()
        with graphguard.capture(mode="capture" if cuda else "audit"):
            dist.all_reduce(x)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    result.update(
        first_region_s=times[0],
        second_region_s=times[1],
        dynamo_imported="torch._dynamo" in sys.modules,
    )
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def dist_first_region(*, gpus: bool = False) -> dict[str, Any]:
    """Launch the 2-rank job (torchrun; on two GPUs with ``gpus``, else CPU only) and return the
    slower rank's figures."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ) if gpus else dict(os.environ, CUDA_VISIBLE_DEVICES="")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", "2", str(Path(__file__).resolve())]
        done = subprocess.run(
            [*cmd, "--dist-first-region-child", out],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the 2-rank job failed ({done.returncode}):\n{done.stderr[-4000:]}")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    slowest = {key: max(r[key] for r in ranks) for key in ranks[0] if key.endswith("_s")}
    return {**slowest, "dynamo_imported": any(r["dynamo_imported"] for r in ranks)}


def first_capture(processes: int) -> dict[str, float]:
    runs = [_child(["--first-capture-child"], hide_cuda=False) for _ in range(processes)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# --- the table ----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def cpu_table_rows(
    cpu: dict[str, Any], first: dict[str, float], dist: dict[str, Any] | None = None
) -> list[str]:
    rows = []
    for key, goal in (("mlp", 1.2), ("dsa", 1.5)):
        r = cpu[key]
        ratio = r["audit_us"] / r["plain_us"]
        rows.append(
            f"| CPU, audit (quiet logs) | {r['step']} | {r['plain_us']:.0f} µs | "
            f"{r['audit_us']:.0f} µs | {ratio:.2f}x | ≤ {goal}x | {_verdict(ratio <= goal)} |"
        )
    for key in ("mlp", "dsa"):
        r = cpu[key]
        rows.append(
            f"| CPU (reference) | {r['step']} under a torch-function mode that only forwards "
            f"each call | {r['plain_us']:.0f} µs | {r['bare_mode_us']:.0f} µs | "
            f"{r['bare_mode_us'] / r['plain_us']:.2f}x | (floor of any mode) | |"
        )
    rows.append(
        f"| CPU | empty region enter + exit | — | {cpu['empty_us']:.1f} µs | — | ≤ 20 µs | "
        f"{_verdict(cpu['empty_us'] <= 20)} |"
    )
    rows.append(
        f"| CPU | first region in a process (beyond imports; median of 5 processes) | — | "
        f"{first['first_region_s'] * 1e3:.1f} ms | — | ≤ 0.2 s | "
        f"{_verdict(first['first_region_s'] <= 0.2)} |"
    )
    if dist is not None and "error" not in dist:
        rows.append(
            "| CPU, 2 ranks (gloo, torchrun) | first audit region (one `all_reduce`; the slower "
            f"rank) | — | {dist['first_region_s'] * 1e3:.1f} ms | — | ≤ 0.2 s | "
            f"{_verdict(dist['first_region_s'] <= 0.2)} |"
        )
    elif dist is not None:
        rows.append(
            "| CPU, 2 ranks (gloo, torchrun) | first audit region | — | error | — | ≤ 0.2 s | "
            f"{dist['error']} |"
        )
    return rows


def _guarded_run(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``{"error": ...}`` if it fails: one failed row must not cost the rest."""
    try:
        return fn(*args)
    except Exception as e:  # reported in the table, with the traceback on stderr
        import traceback

        traceback.print_exc()
        last = (str(e).strip().splitlines() or [""])[-1].replace("|", "/")
        return {"error": f"{type(e).__name__}: {last}"}


def gpu_table_rows(
    card: str,
    results: list[dict[str, Any]],
    first: dict[str, Any] | None,
    two: dict[str, Any] | None = None,
) -> list[str]:
    rows = []
    goals = {"capture": (1.3, 1.3), "audit": (1.2, 1.3)}
    for i, r in enumerate(results):
        if "error" in r:
            rows.append(f"| {card} | step {i + 1} | — | — | — | — | failed: {r['error']} |")
            continue
        cap_goal, audit_goal = goals["capture"][i], goals["audit"][i]
        cap = r["capture_gg_us"] / r["capture_raw_us"]
        aud = r["audit_us"] / r["eager_us"]
        rep = r["replay_gg_us"] / r["replay_raw_us"]
        rows += [
            f"| {card}, capture region | {r['step']} | {r['capture_raw_us']:.0f} µs | "
            f"{r['capture_gg_us']:.0f} µs | {cap:.2f}x | ≤ {cap_goal}x | "
            f"{_verdict(cap <= cap_goal)} |",
            f"| {card}, audit (eager) | {r['step']} | {r['eager_us']:.0f} µs | "
            f"{r['audit_us']:.0f} µs | {aud:.2f}x | ≤ {audit_goal}x | "
            f"{_verdict(aud <= audit_goal)} |",
            f"| {card}, replay (device time per replay) | {r['step']} | "
            f"{r['replay_raw_us']:.2f} µs | {r['replay_gg_us']:.2f} µs | {rep:.3f}x | "
            f"1.00x (keep) | (info) |",
            f"| {card}, replay (host time per call) | {r['step']} | "
            f"{r['replay_host_raw_us']:.2f} µs | {r['replay_host_gg_us']:.2f} µs | "
            f"{_ratio(r['replay_host_raw_us'], r['replay_host_gg_us'])} | (info) | |",
        ]
    if first is not None:
        rows.append(
            _first_capture_row(
                f"{card}, 1 process",
                "first capture region (MLP+attention; median of 3 processes)",
                first,
                "first_gg_capture_s",
            )
        )
    if two is not None:
        rows.append(
            _first_capture_row(
                f"{card}, 2 ranks (NCCL, torchrun)",
                "first capture region (one `all_reduce`; the slower rank)",
                two,
                "first_region_s",
            )
        )
    return rows


def _first_capture_row(where: str, what: str, r: dict[str, Any], gg_key: str) -> str:
    """A first-capture row: graphguard's first capture region against a raw capture."""
    if "error" in r:
        return f"| {where} | {what} | — | — | — | — | failed: {r['error']} |"
    extra = r[gg_key] - r["raw_capture_s"]
    return (
        f"| {where} | {what} | {r['raw_capture_s']:.3f} s | {r[gg_key]:.3f} s | — | "
        f"≤ 0.2 s beyond raw | {_verdict(extra <= 0.2)} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="only the CPU rows")
    parser.add_argument("--reps", type=int, default=100, help="GPU repetitions (default 100)")
    parser.add_argument("--rounds", type=int, default=15, help="CPU rounds (default 15)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--cpu-rows-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-capture-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dist-first-region-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dist_first_region_child:
        dist_first_region_child(args.dist_first_region_child)
        return 0
    if args.cpu_rows_child:
        print(json.dumps(cpu_rows(args.rounds)))
        return 0
    if args.first_capture_child:
        print(json.dumps(first_capture_child()))
        return 0

    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        message = "GPU rows need a CUDA device (torch.cuda.is_available() is False); use --cpu"
        print(message, file=sys.stderr)
        return 2
    started = time.perf_counter()
    raw: dict[str, Any] = {}
    lines = [
        "# graphguard overhead",
        "",
        f"- CPU: {_cpu_model()} ({os.cpu_count()} logical CPUs); CPU steps on one intra-op "
        "thread, timed in that thread's CPU time",
    ]
    if gpu:
        card = torch.cuda.get_device_name()
        lines.append(f"- GPU: {card}")
        _quiet_logs()
        raw["gpu"] = [_guarded_run(measure_gpu, make, args.reps) for make in (mlp_block, dsa_like)]
        raw["first_capture"] = _guarded_run(first_capture, 3)
        if torch.cuda.device_count() >= 2:
            raw["dist_first_capture"] = _guarded_run(lambda: dist_first_region(gpus=True))
    lines += [
        f"- torch: {torch.__version__}"
        + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""),
        f"- Python: {platform.python_version()}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python benchmarks/overhead.py{' --cpu' if not gpu else ''}`",
        "",
        "| where | step | without | with graphguard | ratio | goal | |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    if gpu:
        lines += gpu_table_rows(
            card, raw["gpu"], raw["first_capture"], raw.get("dist_first_capture")
        )
    raw["cpu"] = _child(["--cpu-rows-child", "--rounds", str(args.rounds)], hide_cuda=True)
    raw["first_region"] = first_region(5)
    raw["dist_first_region"] = _guarded_run(dist_first_region)
    lines += cpu_table_rows(raw["cpu"], raw["first_region"], raw["dist_first_region"])
    cpu, first, two = raw["cpu"], raw["first_region"], raw["dist_first_region"]
    lines += [
        "",
        "Each ratio compares the sides alternated in one process (CPU rows: a child process "
        "that sees no CUDA device, so audit emulates the device as on a CPU-only machine).",
        f"The CPU steps make {cpu['mlp']['calls']} (MLP) and {cpu['dsa']['calls']} (DSA) torch "
        "calls that a torch-function mode sees. The reference rows time the same steps under "
        "a mode that only forwards each call: what intercepting through `__torch_function__` "
        "costs before any check runs.",
        f"First region: import torch {first['import_torch_s']:.2f} s, import graphguard "
        f"{first['import_graphguard_s']:.2f} s, first region {first['first_region_s'] * 1e3:.1f} "
        f"ms, second region {first['second_region_s'] * 1e6:.0f} µs (medians of 5 processes).",
    ]
    if "error" not in two:
        lines.append(
            f"2 ranks: first region {two['first_region_s'] * 1e3:.1f} ms, second "
            f"{two['second_region_s'] * 1e3:.1f} ms (the slower rank; each audited region ends "
            "with the ranks' agreement through the group's store, docs/distributed.md); "
            f"torch._dynamo imported: {two['dynamo_imported']}."
        )
    if gpu and "error" not in raw["first_capture"]:
        fc = raw["first_capture"]
        lines.append(
            f"First capture: a raw `torch.cuda.graph` capture of the warmed-up step took "
            f"{fc['raw_capture_s']:.3f} s (after the process's first, which pays CUDA's own "
            f"set-up), graphguard's first capture region {fc['first_gg_capture_s']:.3f} s."
        )
    lines.append(f"Run time: {time.perf_counter() - started:.0f} s.")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
