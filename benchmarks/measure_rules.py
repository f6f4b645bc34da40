"""Measure what torch itself does with each (new or changed) rule's call under a raw capture.

Each case runs in a fresh process: ``x = torch.randn(1024, device="cuda")``, the case's body
inside ``torch.cuda.graph(g)``, one replay compared with an eager run of the same body, then a
check that ordinary CUDA work and RNG still run. The table says what a rule page may claim.

    python benchmarks/measure_rules.py --out results.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import subprocess
import sys

CASES: dict[str, str] = {
    "x[mask] = 0.0": "y = x.clone(); y[y < 0] = 0.0; out = y",
    "x[mask] = 0-dim device tensor": "y = x.clone(); y[y > 1] = x[0]; out = y",
    "x[mask] = (1,)-shaped device tensor": "y = x.clone(); y[y < 0] = x[:1]; out = y",
    "torch.Event.record()": "e = EV; e.record(); out = x * 2",
    "torch.Event.synchronize()": "e = EV; e.record(); e.synchronize(); out = x * 2",
    "torch.Event.query()": "e = EV; e.record(); e.query(); out = x * 2",
    "torch.Stream.synchronize()": "torch.Stream(device='cuda').synchronize(); out = x * 2",
    "torch.accelerator.synchronize()": "torch.accelerator.synchronize(); out = x * 2",
    "x.new_tensor([1.0, 2.0])": "out = x[:2] + x.new_tensor([1.0, 2.0])",
    "torch.save(device tensor)": "import io; torch.save(x, io.BytesIO()); out = x * 2",
    "pageable.copy_(device, non_blocking=True)": "H.copy_(x, non_blocking=True); out = x * 2",
    "pinned.copy_(device, non_blocking=True)": "P.copy_(x, non_blocking=True); out = x * 2",
    "torch.cuda.is_current_stream_capturing()": (
        "c = torch.cuda.is_current_stream_capturing(); out = x * (2 if c else 3)"
    ),
    "clip_grad_norm_ (foreach)": "out = torch.nn.utils.clip_grad_norm_([W], 1.0)",
    "torch.tensor(0.0, device='cpu') (host factory)": (
        "out = x * 2 + torch.tensor(0.0, device='cpu')"
    ),
    # zero-element copies (GG401/GG103 exceptions)
    "torch.tensor([], device='cuda')": "out = x * 2 + torch.tensor([], device='cuda').sum()",
    "empty host tensor .to('cuda')": "out = x * 2 + torch.zeros(0).to('cuda').sum()",
    "empty device tensor .cpu()": "h = x[:0].cpu(); out = x * 2",
    # GG108, GG101 (one_hot), GG106 (cov): host reads inside torch (hidden_syncs.py)
    "torch.linalg.inv": "A = x[:16].view(4, 4) + 4 * torch.eye(4, device='cuda'); "
    "out = torch.linalg.inv(A)",
    "torch.linalg.inv_ex": "A = x[:16].view(4, 4) + 4 * torch.eye(4, device='cuda'); "
    "out = torch.linalg.inv_ex(A)[0]",
    "torch.linalg.cholesky_ex": "A = x[:16].view(4, 4); A = A @ A.T + 4 * torch.eye(4, "
    "device='cuda'); out = torch.linalg.cholesky_ex(A)[0]",
    "torch.linalg.solve": "A = x[:16].view(4, 4) + 4 * torch.eye(4, device='cuda'); "
    "out = torch.linalg.solve(A, x[:4])",
    "F.one_hot(t) without num_classes": "out = torch.nn.functional.one_hot((x[:8] > 0).long())",
    "F.one_hot(t, num_classes=2)": "out = torch.nn.functional.one_hot((x[:8] > 0).long(), 2)",
    "torch.cov": "out = torch.cov(x[:16].view(4, 4))",
    "x[:n] with a device tensor n": "n = (x[:8] > 0).sum() + 1; out = x[:n] * 2",
    "torch.zeros(n) with a device tensor n": "n = (x[:8] > 0).sum() + 1; "
    "out = torch.zeros(n, device='cuda')",
    "x.topk(k) with a device tensor k": "k = (x[:8] > 0).sum() + 1; out = x.topk(k).values",
    "F.grouped_mm float32, device offs (GG103)": "o = torch.arange(1, 4, device='cuda', "
    "dtype=torch.int32) * 5 + 1; out = torch.nn.functional.grouped_mm(x[:256].view(16, 16), "
    "x[:768].view(3, 16, 16), offs=o)",
    "F.grouped_mm bfloat16, device offs": "o = torch.arange(1, 4, device='cuda', "
    "dtype=torch.int32) * 5 + 1; out = torch.nn.functional.grouped_mm(x[:256].view(16, 16)"
    ".bfloat16(), x[:768].view(3, 16, 16).bfloat16(), offs=o)",
    "`0.5 in x` (GG102)": "out = x * (2 if 0.5 in x else 3)",
    "F.gaussian_nll_loss (GG102)": "out = torch.nn.functional.gaussian_nll_loss(x[:8], x[8:16], "
    "x[16:24].abs() + 0.1)",
    "nn.TransformerEncoder eval + padding mask (GG109)": "enc = M.get('e') or M.setdefault('e', "
    "torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, "
    "batch_first=True), 1).cuda().eval()); pad = x[:8].view(2, 4) > 0.5; "
    "out = enc(x[:128].view(2, 4, 16), src_key_padding_mask=pad)",
    "... the same with enable_nested_tensor=False": "enc = M.get('f') or M.setdefault('f', "
    "torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, "
    "batch_first=True), 1, enable_nested_tensor=False).cuda().eval()); "
    "pad = x[:8].view(2, 4) > 0.5; out = enc(x[:128].view(2, 4, 16), src_key_padding_mask=pad)",
    "F.pad(x, (0, n)) with a device tensor n (GG101)": "n = (x[:8] > 0).sum(); "
    "out = torch.nn.functional.pad(x, (0, n))[:1024]",
    "x.split(n) with a device tensor n (GG101)": "n = (x[:8] > 0).sum() + 1; out = x.split(n)[0]",
    "F.interpolate(size=n) with a device tensor n (GG101)": "n = (x[:8] > 0).sum() + 1; "
    "out = torch.nn.functional.interpolate(x.view(1, 1, -1), size=n)",
    "torch.histc(x, 10): min == max (GG101)": "out = torch.histc(x, 10)",
    "torch.histc(x, 10, -4, 4)": "out = torch.histc(x, 10, -4, 4)",
    # F.ctc_loss with length tensors on the device: the cuDNN form (float32, 1-D int32 targets,
    # int32 lengths, blank 0) asserts on the device under capture; other forms may copy the
    # lengths to the host (LossCTC.cpp). Not a rule yet: measured first.
    "F.ctc_loss, int64 device lengths": "lp = x[:80].view(8, 2, 5).log_softmax(-1); "
    "tg = torch.arange(1, 7, device='cuda').view(2, 3) % 4 + 1; "
    "n = torch.full((2,), 8, device='cuda'); m = torch.full((2,), 3, device='cuda'); "
    "out = torch.nn.functional.ctc_loss(lp, tg, n, m)",
    "F.ctc_loss, cuDNN form (int32)": "lp = x[:80].view(8, 2, 5).log_softmax(-1); "
    "tg = (torch.arange(1, 7, device='cuda', dtype=torch.int32) % 4 + 1); "
    "n = torch.full((2,), 8, device='cuda', dtype=torch.int32); "
    "m = torch.full((2,), 3, device='cuda', dtype=torch.int32); "
    "out = torch.nn.functional.ctc_loss(lp, tg, n, m)",
    "F.ctc_loss, lengths as lists": "lp = x[:80].view(8, 2, 5).log_softmax(-1); "
    "tg = torch.arange(1, 7, device='cuda').view(2, 3) % 4 + 1; "
    "out = torch.nn.functional.ctc_loss(lp, tg, [8, 8], [3, 3])",
    "F.ctc_loss, lengths as CPU tensors": "lp = x[:80].view(8, 2, 5).log_softmax(-1); "
    "tg = torch.arange(1, 7, device='cuda').view(2, 3) % 4 + 1; "
    "out = torch.nn.functional.ctc_loss(lp, tg, torch.full((2,), 8), torch.full((2,), 3))",
    # indexed writes: index_put_ moves a host 0-dim value (a Python number becomes one) with
    # value.to(self.device()) unless the write goes to masked_fill_ (TensorAdvancedIndexing.cpp)
    "x[idx] = 0.0, idx a device index tensor (GG401)": "y = x.clone(); "
    "i = torch.arange(0, 8, device='cuda'); y[i] = 0.0; out = y",
    "x[(i, j)] = 1, device index tensors (GG401)": "y = x[:64].clone().view(8, 8); "
    "i = torch.arange(8, device='cuda'); y[(i, i)] = 1; out = y",
    "x.index_put_((idx,), torch.tensor(1.0)) (GG401)": "y = x.clone(); "
    "i = torch.arange(0, 8, device='cuda'); y.index_put_((i,), torch.tensor(1.0)); out = y",
    "x[idx] = x.new_full((), 0.0)": "y = x.clone(); i = torch.arange(0, 8, device='cuda'); "
    "y[i] = y.new_full((), 0.0); out = y",
    "x.index_put_((idx,), device 0-dim, accumulate=True)": "y = x.clone(); "
    "i = torch.arange(0, 8, device='cuda'); y.index_put_((i,), x[0], accumulate=True); out = y",
    "x[:, mask] = 0.0": "y = x[:64].clone().view(8, 8); y[:, y[0] > 0] = 0.0; out = y",
    "x[mask] = torch.tensor(0.0) (a host 0-dim value)": "y = x.clone(); "
    "y[y < 0] = torch.tensor(0.0); out = y",
    "host_table[n] with a 0-dim device index (GG101)": "n = (x[:8] > 0).sum(); "
    "t = torch.linspace(0.0, 1.0, 16); out = x * t[n]",
    # fill values given as tensors: masked_fill/index_fill take value.item() (C++), full_like's
    # parser converts its Scalar; fill_ copies a device value on the device
    "x.masked_fill(mask, device 0-dim) (GG101)": "out = x.masked_fill(x > 0, x[0])",
    "x.masked_fill(mask, torch.tensor(0.5)) (host value)": "out = x.masked_fill(x > 0, "
    "torch.tensor(0.5))",
    "x.index_fill_(0, idx, device 0-dim) (GG101)": "out = x.clone().index_fill_(0, "
    "torch.arange(4, device='cuda'), x[0])",
    "torch.full_like(x, device 0-dim) (GG101)": "out = torch.full_like(x, x[0])",
    "x.fill_(device 0-dim)": "out = x.clone().fill_(x[0])",
    # torch.multinomial checks its probabilities with .item() without replacement or for one
    # sample (Distributions.cpp); with replacement and several samples it does not
    "torch.multinomial(p, 1) (GG101)": "p = x[:64].view(4, 16).softmax(-1); "
    "out = torch.multinomial(p, 1)",
    "torch.multinomial(p, 4, replacement=True)": "p = x[:64].view(4, 16).softmax(-1); "
    "out = torch.multinomial(p, 4, replacement=True)",
    "exponential race (p / Exp(1)).argmax()": "p = x[:64].view(4, 16).softmax(-1); "
    "out = (p / torch.empty_like(p).exponential_()).argmax(-1)",
    "torch.combinations(x[:6], 2) (GG105)": "out = torch.combinations(x[:6], 2)",
    # leads of the OpInfo trace through the profiler (hidden_syncs.py --opinfo 2 --native)
    "torch.linalg.eigh (GG108)": "A = x[:16].view(4, 4); out = torch.linalg.eigh(A @ A.T)[0]",
    "torch.linalg.svdvals (GG108)": "out = torch.linalg.svdvals(x[:16].view(4, 4))",
    "torch.linalg.matrix_norm(ord='nuc') (GG108)": "out = torch.linalg.matrix_norm("
    "x[:16].view(4, 4), ord='nuc')",
    "torch.linalg.lstsq (GG108)": "A = x[:16].view(4, 4) + 4 * torch.eye(4, device='cuda'); "
    "out = torch.linalg.lstsq(A, x[:4, None]).solution",
    "torch.cholesky_solve (GG108)": "A = x[:16].view(4, 4); A = A @ A.T + 4 * torch.eye(4, "
    "device='cuda'); L = torch.linalg.cholesky_ex(A)[0]; "
    "out = torch.cholesky_solve(x[:4, None], L)",
    "torch.linalg.matrix_exp (GG103)": "out = torch.linalg.matrix_exp(x[:16].view(4, 4) * 0.1)",
    "torch.linalg.lu_solve": "A = x[:16].view(4, 4) + 4 * torch.eye(4, device='cuda'); "
    "LU, piv, _ = torch.linalg.lu_factor_ex(A); out = torch.linalg.lu_solve(LU, piv, x[:4, None])",
    "torch.quantile(x, 0.5)": "out = torch.quantile(x[:64], 0.5)",
    "torch.quantile(x, device q)": "out = torch.quantile(x[:64], x[:2].sigmoid())",
    "x.var()": "out = x.var()",
    "x.to_sparse() (GG105)": "out = x[:64].view(8, 8).relu().to_sparse().values()",
    "x.repeat_interleave(2)": "out = x[:8].repeat_interleave(2)",
    "F.multilabel_margin_loss": "t = torch.arange(8, device='cuda').view(2, 4) % 3; "
    "out = torch.nn.functional.multilabel_margin_loss(x[:8].view(2, 4), t)",
    "x[n] with a 0-dim device index (GG101)": "n = (x[:8] > 0).sum(); out = x[n] * 2",
    "torch.istft": "w = torch.hann_window(32, device='cuda'); "
    "s = torch.stft(x[:256], 32, window=w, return_complex=True); "
    "out = torch.istft(s, 32, window=w)",
    "torch.as_tensor(device tensor, device='cpu')": "h = torch.as_tensor(x[:4], device='cpu'); "
    "out = x * 2",
    # the last leads of hidden_syncs.py --opinfo 2 --native (not yet measured)
    "torch.linalg.ldl_solve": "A = x[:16].view(4, 4); A = A @ A.T + 4 * torch.eye(4, "
    "device='cuda'); LD, piv, _ = torch.linalg.ldl_factor_ex(A); "
    "out = torch.linalg.ldl_solve(LD, piv, x[:4, None])",
    "torch.segment_reduce(x, 'sum', lengths=device tensor)": "n = torch.full((4,), 2, "
    "device='cuda'); out = torch.segment_reduce(x[:8], 'sum', lengths=n)",
    # which call of the ldl_solve row refused the capture; segment_reduce without its checks
    "torch.linalg.ldl_factor_ex alone": "A = x[:16].view(4, 4); A = A @ A.T + 4 * torch.eye(4, "
    "device='cuda'); out = torch.linalg.ldl_factor_ex(A)[0]",
    "torch.linalg.ldl_solve alone (factors made before)": "A = x[:16].view(4, 4); "
    "A = A @ A.T + 4 * torch.eye(4, device='cuda'); "
    "LD, piv, _ = M.get('ldl') or M.setdefault('ldl', torch.linalg.ldl_factor_ex(A)); "
    "out = torch.linalg.ldl_solve(LD, piv, x[:4, None])",
    "torch.segment_reduce(..., lengths=device tensor, unsafe=True)": "n = torch.full((4,), 2, "
    "device='cuda'); out = torch.segment_reduce(x[:8], 'sum', lengths=n, unsafe=True)",
    "torch.segment_reduce(..., offsets=device tensor)": "o = torch.arange(0, 10, 2, "
    "device='cuda'); out = torch.segment_reduce(x[:8], 'sum', offsets=o)",
}

CHILD = r"""
import json, sys, torch
body = sys.argv[1]
x = torch.randn(1024, device="cuda")
W = torch.nn.Parameter(torch.randn(8, device="cuda")); W.grad = torch.randn(8, device="cuda")
H = torch.empty(1024)
P = torch.empty(1024, pin_memory=True)
EV = torch.Event(device="cuda")
M = {}  # objects a body builds once, during the eager warm-up, and reuses under capture
res = {}
def run():
    ns = dict(torch=torch, x=x, W=W, H=H, P=P, EV=EV, M=M)
    exec(body, ns)
    return ns["out"]
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(2):
        run()
torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
g = torch.cuda.CUDAGraph()
try:
    with torch.cuda.graph(g):
        out = run()
    g.replay(); torch.cuda.synchronize()
    ref = run(); torch.cuda.synchronize()
    same = torch.equal(out, ref) if isinstance(out, torch.Tensor) else None
    verdict = "= eager" if same else ("!= eager" if same is False else "ran")
    res["capture"] = "captured, replay " + verdict
except Exception as e:
    res["capture"] = f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"
try:
    torch.randn(8, device="cuda").sum().item()
    res["healthy"] = "yes"
except Exception as e:
    res["healthy"] = f"no ({str(e).splitlines()[0][:80]})"
print("RESULT " + json.dumps(res))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument(
        "--jobs", type=int, default=4, help="cases measured at once (each in its own process)"
    )
    parser.add_argument("--only", default="", help="only the cases whose name contains this")
    args = parser.parse_args()
    import torch

    def measure(body: str) -> tuple[str, str]:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, body], capture_output=True, text=True, timeout=120
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        res = json.loads(line[7:]) if line else {"capture": f"crashed: {proc.stderr[-200:]}"}
        return res.get("capture", "?"), res.get("healthy", "?")

    cases = {name: body for name, body in CASES.items() if args.only in name}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {name: pool.submit(measure, body) for name, body in cases.items()}
        rows = [(name, *futures[name].result()) for name in cases]
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [
        f"# torch under raw capture, per rule case ({card}, torch {torch.__version__}, "
        f"{datetime.date.today()})",
        "",
        "| body inside `torch.cuda.graph` | what torch did | process usable after |",
        "| --- | --- | --- |",
        *[f"| `{n}` | {c} | {h} |" for n, c, h in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
