"""Steps for ``graphed(..., verify=N)`` on a GPU: graphs that replay wrong, and legal ones.

Each case builds a ``realmodel_cases.Step`` (static inputs refilled by ``before_step(k)``) and
says what verification must find: ``None`` (a legal step: no GG901 over ``REPLAYS`` verified
replays with changing inputs) or ``"GG901"``. ``run_case`` wraps ``step.run`` in
``graphguard.graphed(warmup=0, verify=REPLAYS)`` after the usual side-stream warm-up, calls it
once to capture and ``REPLAYS`` times to replay, and returns a record (verdict, the first
differing path, the replay index, the time of a verified call).

Used by ``tests/test_verify_cuda.py`` and ``benchmarks/verify.py``. Run one case as
``python tests/verify_cases.py CASE`` (prints one ``RESULT {json}`` line).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import realmodel_cases as rc
import verify_helper

import graphguard

REPLAYS = 5


@dataclass(frozen=True)
class VerifyCase:
    name: str
    build: Callable[[str], rc.Step]
    expect: str | None  # None: legal; "GG901": a replay must differ
    what: str
    needs: tuple[str, ...] = ()
    deterministic: bool = False


# --- graphs that replay wrong ---------------------------------------------------------------------
def lm_dynamic_decode(model_type: str, **over: Any) -> Callable[[str], rc.Step]:
    """A decode step with transformers' DynamicCache: the cache grows by torch.cat inside the
    capture, so the graph keeps writing memory the Python cache object no longer matches."""

    def build(device: str) -> rc.Step:
        from transformers import DynamicCache

        model = rc._lm(model_type, device, **over)
        batch, prompt, steps = 2, 4, rc.WARMUP + rc.CALLS
        cache = DynamicCache()
        prompt_ids = rc._randint(rc.VOCAB, (batch, prompt)).to(device)
        toks = rc._randint(rc.VOCAB, (steps, batch, 1), rc.SEED + 1).to(device)
        tok = toks[0].clone()

        def setup() -> None:
            with torch.no_grad():
                model(input_ids=prompt_ids, past_key_values=cache, use_cache=True)

        def before_step(k: int) -> None:
            tok.copy_(toks[k])

        def decode_step() -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
            return (out.logits,)

        return rc.Step(decode_step, [model], before_step, setup=setup)

    return build


def helper_float(device: str) -> rc.Step:
    """The step calls a helper of another module that reads a module-level float; the loop
    changes it before every call (a schedule kept in a helper module)."""
    x = torch.randn(8, 16, device=device)
    w = torch.randn(16, 16, device=device)

    def before_step(k: int) -> None:
        verify_helper.SCALE = 0.5 + 0.25 * k

    def step() -> tuple[torch.Tensor, ...]:
        return (verify_helper.scaled(x @ w),)

    return rc.Step(step, [], before_step)


# --- legal steps ------------------------------------------------------------------------------
def mlp_dropout(device: str) -> rc.Step:
    torch.manual_seed(rc.SEED)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(256, 64)
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    n = rc.WARMUP + rc.CALLS
    xs = torch.randn(n, 32, 64, generator=rc._gen()).to(device)
    x = xs[0].clone()

    def before_step(k: int) -> None:
        x.copy_(xs[k])

    def step() -> tuple[torch.Tensor, ...]:
        opt.zero_grad(set_to_none=False)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return (loss.detach(),)

    return rc.Step(step, [model], before_step)


def dsa_step(device: str) -> rc.Step:
    from dsa._workload import patched_step

    B, H, D, topk, L = 4, 64, 128, 2048, 8192
    gen = torch.Generator().manual_seed(rc.SEED)
    n = rc.WARMUP + rc.CALLS
    qs = torch.randn(n, B, 1, H, D, generator=gen).to(device=device, dtype=torch.bfloat16)
    ks = torch.randn(n, B, L, D, generator=gen).to(device=device, dtype=torch.bfloat16)
    ws = torch.randn(n, B, 1, H, generator=gen).to(device)
    lens = torch.randint(0, L + 1, (n, B), generator=gen).to(device)
    q, k, w, seq_lens = qs[0].clone(), ks[0].clone(), ws[0].clone(), lens[0].clone()
    mask = torch.zeros(B, 1, L, device=device)

    def before_step(i: int) -> None:
        q.copy_(qs[i])
        k.copy_(ks[i])
        w.copy_(ws[i])
        seq_lens.copy_(lens[i])

    def step() -> tuple[torch.Tensor, ...]:
        out = patched_step(q, k, w, seq_lens, mask, topk)
        return (out.indices, out.mask)

    return rc.Step(step, [], before_step)


def _rc(name: str) -> Callable[[str], rc.Step]:
    return rc.BY_NAME[name].build


CASES: list[VerifyCase] = [
    VerifyCase(
        "llama_dynamic_decode",
        lm_dynamic_decode("llama"),
        "GG901",
        "Llama decode step, DynamicCache",
        ("transformers",),
    ),
    VerifyCase(
        "mistral_sliding_static_decode",
        rc.lm_static_decode("mistral", sliding_window=16),
        "GG901",
        "Mistral sliding-window decode, StaticCache (a Python int offset in the cache layer)",
        ("transformers",),
    ),
    VerifyCase(
        "gemma2_sliding_static_decode",
        rc.lm_static_decode("gemma2", head_dim=16),
        "GG901",
        "Gemma2 decode (sliding-window layers), StaticCache: raw capture replays it wrong "
        "(audit_sweep-gpu-h200.md)",
        ("transformers",),
    ),
    VerifyCase("helper_module_float", helper_float, "GG901", "a float read in another module"),
    VerifyCase(
        "llama_static_decode",
        _rc("llama_static_decode"),
        None,
        "Llama StaticCache decode",
        ("transformers",),
    ),
    VerifyCase(
        "qwen2_static_decode",
        _rc("qwen2_static_decode"),
        None,
        "Qwen2 StaticCache decode",
        ("transformers",),
    ),
    VerifyCase(
        "gemma_static_decode",
        _rc("gemma_static_decode"),
        None,
        "Gemma StaticCache decode",
        ("transformers",),
    ),
    VerifyCase("llama_forward", _rc("llama_forward"), None, "Llama forward", ("transformers",)),
    VerifyCase(
        "llama_train_adamw",
        _rc("llama_train_adamw"),
        None,
        "Llama training step, AdamW(capturable=True)",
        ("transformers",),
    ),
    VerifyCase(
        "timm_vit_tiny_train",
        _rc("timm_vit_tiny_train"),
        None,
        "timm ViT-tiny forward+backward, AdamW",
        ("timm",),
    ),
    VerifyCase(
        "timm_convnext_atto_train",
        _rc("timm_convnext_atto_train"),
        None,
        "timm ConvNeXt-atto forward+backward, AdamW",
        ("timm",),
    ),
    VerifyCase("mlp_dropout_train", mlp_dropout, None, "MLP with dropout, SGD momentum"),
    VerifyCase("dsa_step", dsa_step, None, "DSA index-mask step (B=4, L=8192)"),
    VerifyCase(
        "resnet18_sgd",
        rc.build_resnet18_sgd,
        None,
        "torchvision resnet18, SGD momentum (the PyTorch docs' whole-network capture)",
        ("torchvision",),
    ),
    VerifyCase(
        "resnet18_sgd_deterministic",
        rc.build_resnet18_sgd,
        None,
        "the same with deterministic cuDNN",
        ("torchvision",),
        deterministic=True,
    ),
]
BY_NAME = {c.name: c for c in CASES}


def missing(case: VerifyCase) -> list[str]:
    out = []
    for name in case.needs:
        try:
            __import__(name)
        except Exception:
            out.append(name)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(name: str, device: str = "cuda") -> dict[str, Any]:
    """Capture once, replay ``REPLAYS`` times with new inputs, each replay verified."""
    case = BY_NAME[name]
    if case.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(rc.SEED)
    step = case.build(device)
    step.setup()
    rc.warm_up(step, device)
    res: dict[str, Any] = {"case": name, "expect": case.expect or "legal", "what": case.what}
    graphed = graphguard.graphed(step.run, warmup=0, verify=REPLAYS, label=name)
    k = rc.WARMUP
    step.before_step(k)
    step.prologue()
    graphed()  # the capture

    def timed_call(r: int) -> float:
        step.before_step(k + r)
        step.prologue()
        _sync(device)
        t0 = time.perf_counter()
        graphed()
        _sync(device)
        return time.perf_counter() - t0

    times = []
    try:
        for r in range(1, REPLAYS + 1):
            times.append(timed_call(r))
        res["verdict"] = "legal"
    except graphguard.ReplayMismatchError as e:
        d = e.diagnostic
        res["verdict"] = d.code
        res["message"] = d.message
        res["details"] = [list(item) for item in d.details]
        res["replay"] = r
    res["verified_call_ms"] = round(1e3 * min(times), 3) if times else None
    if res["verdict"] == "legal":  # past the verified replays: plain replays, for the cost
        plain = [timed_call(r) for r in range(REPLAYS + 1, rc.CALLS)]
        res["plain_call_ms"] = round(1e3 * min(plain), 3)
    res["graphs"] = graphed.stats["graphs"]
    res["ok"] = res["verdict"] == (case.expect or "legal")
    return res


def main(argv: list[str]) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in argv:
        if missing(BY_NAME[name]):
            print("RESULT " + json.dumps({"case": name, "skipped": missing(BY_NAME[name])}))
            continue
        try:
            print("RESULT " + json.dumps(run_case(name, device)), flush=True)
        except Exception as e:  # one record per case, whatever happens
            err = {"case": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:600]}
            print("RESULT " + json.dumps(err), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
