#!/usr/bin/env python3
"""graphguard across many transformers architectures: audit verdicts, and on a GPU raw capture.

``tests/realmodel_cases.py`` holds the real-model cases the test suite checks, each with its
expected verdict. This script goes wide instead: a forward step (and, for decoder LMs, an AdamW
training step with ``graph_safe_optimizer`` and gradient clipping, and a StaticCache decode step)
of every architecture listed below, built tiny from its config with random weights, padded
attention masks included. Where diffusers is installed, its family joins: a UNet forward and
training step, a VAE round trip and one sampling-loop step per scheduler. Nobody
decides a verdict up front:

- ``--cpu``: each step once under ``graphguard.capture(mode="audit")`` on CPU tensors (as CI
  sees them); the table lists what audit reports, if anything, and where;
- ``--gpu``: per step, in fresh processes, a plain ``torch.cuda.graph`` capture replayed against
  an eager twin (``raw``), ``graphguard.capture()`` (``capture``), ``capture(verify=1)`` with
  its first replay checked against the step run eagerly (``verify``) and audit on CUDA tensors;
  a step is legal when the raw capture succeeded and every replay matched. graphguard agrees
  when it is silent on a legal step and reports an illegal one in capture and in audit; a step
  that captures but replays wrong makes no call a rule could intercept, so there graphguard
  agrees when the verified replay reports GG901.

    python benchmarks/audit_sweep.py --cpu --out benchmarks/results/audit_sweep-cpu.md
    python benchmarks/audit_sweep.py --gpu --jobs 8 --out benchmarks/results/audit_sweep-h200.md

The phases are ``tests/realmodel_cases.py``'s (``run_phase``), applied to the steps built here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: decoder LMs: a forward (no cache, padded mask) and a training step each
DECODERS = [
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt2", "gpt_neox",
    "opt", "bloom", "falcon", "mixtral", "qwen2_moe", "qwen3_moe", "olmo", "olmo2", "stablelm",
    "starcoder2", "granite", "cohere", "gptj", "codegen", "mpt", "glm", "smollm3",
]  # fmt: skip
#: encoders: a forward with a padded mask
ENCODERS = ["bert", "roberta", "distilbert", "albert", "electra", "mpnet"]
#: encoder-decoders: a forward (padded source, decoder ids) and a training step each
SEQ2SEQ = [
    "t5", "mt5", "bart", "mbart", "pegasus", "marian", "m2m_100", "blenderbot", "prophetnet", "led",
]  # fmt: skip
#: image classifiers on 32x32 images: a forward and a training step each
VISION = ["vit", "dinov2", "beit", "convnext", "convnextv2", "resnet", "regnet", "segformer", "cvt"]
#: speech: Whisper (log-mel features, decoder ids) and CTC models (a padded waveform), forward
AUDIO = ["whisper", "wav2vec2", "hubert", "wavlm", "data2vec-audio"]
#: diffusers (when installed): a conditional UNet (forward, training step), a VAE round trip,
#: and one denoising step of a sampling loop (UNet + scheduler.step) per scheduler
DIFFUSION = ["unet", "vae", "ddim", "euler", "dpmsolver"]

_SIZES = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, vocab_size=512, max_position_embeddings=128, head_dim=16,
    pad_token_id=0, n_embd=64, n_layer=2, n_head=4, n_positions=128, d_model=64,
    num_layers=2, num_heads=4, num_experts=4, num_local_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, embedding_size=64, dim=64,
    n_layers=2, n_heads=4, hidden_dim=128, rotary_dim=8, d_head=16, word_embed_proj_dim=64,
    ffn_dim=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_dropout=0.0,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, dropout=0.0,
)  # fmt: skip


#: realmodel_cases' decoder config (hidden 64, 4 heads) plus what an architecture needs beside it
_DECODE_SIZES: dict[str, dict[str, Any]] = {
    arch: {"head_dim": 16} for arch in DECODERS if arch not in ("falcon", "gptj", "codegen")
}
_DECODE_SIZES.update(gptj={"rotary_dim": 8}, codegen={"rotary_dim": 8})


#: beside _SIZES: image models (32x32 RGB, two stages where they have stages), speech models
_FAMILY_SIZES: dict[str, dict[str, Any]] = {
    "seq2seq": dict(decoder_start_token_id=2, decoder_vocab_size=512),
    "vision": dict(
        image_size=32, patch_size=8, num_channels=3, hidden_sizes=[16, 32], depths=[1, 1],
        embed_dim=16, num_labels=3, embedding_size=16, encoder_stride=8,
    ),
    "audio": dict(
        max_source_positions=16, max_target_positions=32, num_mel_bins=16, conv_dim=[16, 16],
        conv_kernel=[10, 3], conv_stride=[5, 2], num_feat_extract_layers=2, vocab_size=64,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, decoder_start_token_id=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2,
        decoder_layers=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
    ),
}  # fmt: skip


#: per architecture, after the family's: configs whose per-stage lists must agree in length
#: (older transformers read the stage count from a field of its own)
_ARCH_SIZES: dict[str, dict[str, Any]] = {
    "convnext": dict(num_stages=2),
    "convnextv2": dict(num_stages=2),
    "segformer": dict(
        num_encoder_blocks=2, sr_ratios=[2, 1], patch_sizes=[7, 3], strides=[4, 2],
        num_attention_heads=[1, 2], mlp_ratios=[4, 4], decoder_hidden_size=32,
    ),
}  # fmt: skip


def _config(arch: str, family: str = "") -> Any:
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(arch)
    family_sizes = _FAMILY_SIZES.get(family, {})
    if family == "seq2seq":  # the training loss shifts labels by it; some configs lack it
        cfg.decoder_start_token_id = family_sizes["decoder_start_token_id"]
    for key, value in {**_SIZES, **family_sizes, **_ARCH_SIZES.get(arch, {})}.items():
        if hasattr(cfg, key):
            with contextlib.suppress(Exception):  # a read-only alias of another size
                setattr(cfg, key, value)
    # every dropout, drop-path and layer-drop rate to 0, whatever the config calls it (T5's
    # dropout_rate, BEiT's drop_path_rate, CvT's per-stage lists): a random step replays other
    # draws than its eager twin, and the raw column compares the two
    for key, value in cfg.to_dict().items():
        if "drop" not in key or not hasattr(cfg, key):
            continue
        if isinstance(value, float) and value > 0:
            with contextlib.suppress(Exception):
                setattr(cfg, key, 0.0)
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            with contextlib.suppress(Exception):
                setattr(cfg, key, [0.0] * len(value))
    return cfg


def _inputs(device: str) -> tuple[Any, Any]:
    import torch

    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :4] = 0  # left padding in the second row
    return ids, mask.to(device)


def _forward(arch: str) -> Any:
    import realmodel_cases as rc

    def build(device: str) -> rc.Step:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        encoder = arch in ENCODERS
        cls = AutoModel if encoder else AutoModelForCausalLM
        model = cls.from_config(_config(arch)).to(device).eval()
        ids, mask = _inputs(device)
        extra = {} if encoder else {"use_cache": False}

        def forward() -> tuple[Any, ...]:
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, **extra)
            return (out.last_hidden_state if encoder else out.logits,)

        return rc.Step(forward, modules=[model])

    return build


def _step(
    model: Any, train: bool, eval_inputs: dict[str, Any], train_inputs: dict[str, Any], clip: bool
) -> Any:
    """A no-grad forward returning the logits, or an AdamW training step on the model's loss."""
    import realmodel_cases as rc
    import torch

    import graphguard

    if not train:
        model.eval()

        def forward() -> tuple[Any, ...]:
            with torch.no_grad():
                return (model(**eval_inputs).logits,)

        return rc.Step(forward, modules=[model])
    model.train()
    opt = graphguard.graph_safe_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-3))

    def train_step() -> tuple[Any, ...]:
        opt.zero_grad(set_to_none=False)
        loss = model(**train_inputs).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return (loss.detach(),)

    return rc.Step(train_step, modules=[model], state=lambda: list(model.parameters()))


def _train(arch: str) -> Any:
    def build(device: str) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(_config(arch)).to(device)
        ids, mask = _inputs(device)
        inputs = dict(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        return _step(model, True, {}, inputs, clip=True)

    return build


def _seq2seq(arch: str, train: bool) -> Any:
    def build(device: str) -> Any:
        import torch
        from transformers import AutoModelForSeq2SeqLM

        model = AutoModelForSeq2SeqLM.from_config(_config(arch, "seq2seq")).to(device)
        ids, mask = _inputs(device)
        gen = torch.Generator().manual_seed(1)
        decoder_ids = torch.randint(3, 500, (2, 8), generator=gen).to(device)
        source = dict(input_ids=ids, attention_mask=mask)
        # training passes labels alone: the model shifts them into decoder inputs itself
        return _step(
            model, train, {**source, "decoder_input_ids": decoder_ids},
            {**source, "labels": decoder_ids}, clip=False,
        )  # fmt: skip

    return build


def _vision(arch: str, train: bool) -> Any:
    def build(device: str) -> Any:
        import torch
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_config(_config(arch, "vision")).to(device)
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randn(2, 3, 32, 32, generator=gen).to(device)
        labels = torch.tensor([0, 2]).to(device)
        return _step(
            model, train, {"pixel_values": pixels}, {"pixel_values": pixels, "labels": labels},
            clip=False,
        )  # fmt: skip

    return build


def _audio(arch: str) -> Any:
    import realmodel_cases as rc

    def build(device: str) -> rc.Step:
        import torch
        from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq

        gen = torch.Generator().manual_seed(0)
        if arch == "whisper":
            model = AutoModelForSpeechSeq2Seq.from_config(_config(arch, "audio"))
            model = model.to(device).eval()
            feats = torch.randn(2, 16, 32, generator=gen).to(device)
            decoder_ids = torch.randint(3, 60, (2, 6), generator=gen).to(device)

            def forward() -> tuple[Any, ...]:
                with torch.no_grad():
                    return (model(input_features=feats, decoder_input_ids=decoder_ids).logits,)

            return rc.Step(forward, modules=[model])
        model = AutoModelForCTC.from_config(_config(arch, "audio")).to(device).eval()
        wave = torch.randn(2, 1600, generator=gen).to(device)
        mask = torch.ones(2, 1600, dtype=torch.long)
        mask[1, 1200:] = 0  # the second waveform is shorter: padded at the end
        mask = mask.to(device)

        def ctc_forward() -> tuple[Any, ...]:
            with torch.no_grad():
                return (model(input_values=wave, attention_mask=mask).logits,)

        return rc.Step(ctc_forward, modules=[model])

    return build


def _tiny_unet(device: str) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
    ).to(device)  # fmt: skip


def _diffusion(arch: str, kind: str) -> Any:
    def build(device: str) -> Any:
        import realmodel_cases as rc
        import torch

        import graphguard

        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 4, 16, 16, generator=gen).to(device)
        text = torch.randn(2, 8, 32, generator=gen).to(device)
        if arch == "vae":
            from diffusers import AutoencoderKL

            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(16, 32), sample_size=32,
            ).to(device).eval()  # fmt: skip
            images = torch.randn(2, 3, 32, 32, generator=gen).to(device)

            def round_trip() -> tuple[Any, ...]:
                with torch.no_grad():
                    z = vae.encode(images).latent_dist.mode()
                    return (vae.decode(z).sample,)

            return rc.Step(round_trip, modules=[vae])
        unet = _tiny_unet(device)
        t = torch.full((2,), 500, device=device)
        if kind == "forward":
            unet.eval()

            def forward() -> tuple[Any, ...]:
                with torch.no_grad():
                    return (unet(latents, t, encoder_hidden_states=text).sample,)

            return rc.Step(forward, modules=[unet])
        if kind == "train":
            opt = graphguard.graph_safe_optimizer(torch.optim.AdamW(unet.parameters(), lr=1e-4))
            noise = torch.randn(2, 4, 16, 16, generator=gen).to(device)

            def train_step() -> tuple[Any, ...]:
                opt.zero_grad(set_to_none=False)
                pred = unet(latents, t, encoder_hidden_states=text).sample
                loss = torch.nn.functional.mse_loss(pred, noise)
                loss.backward()
                opt.step()
                return (loss.detach(),)

            return rc.Step(train_step, modules=[unet], state=lambda: list(unet.parameters()))
        # one step of a sampling loop, as a pipeline runs it: the timestep is a device scalar
        # from scheduler.timesteps (set_timesteps(device=...)), refilled before each call
        import diffusers

        cls = {
            "ddim": diffusers.DDIMScheduler,
            "euler": diffusers.EulerDiscreteScheduler,
            "dpmsolver": diffusers.DPMSolverMultistepScheduler,
        }[arch]
        scheduler = cls(num_train_timesteps=1000)
        scheduler.set_timesteps(20, device=device)
        unet.eval()
        step_t = scheduler.timesteps[0].clone()
        sample = latents.clone()

        def before_step(k: int) -> None:
            step_t.copy_(scheduler.timesteps[k % len(scheduler.timesteps)])

        def denoise() -> tuple[Any, ...]:
            with torch.no_grad():
                model_in = scheduler.scale_model_input(sample, step_t)
                eps = unet(model_in, step_t, encoder_hidden_states=text).sample
                sample.copy_(scheduler.step(eps, step_t, sample).prev_sample)
            return (sample,)

        return rc.Step(denoise, modules=[unet], before_step=before_step)

    return build


def _steps(arch: str) -> list[tuple[str, Any]]:
    import realmodel_cases as rc

    if arch in DIFFUSION:
        if arch == "unet":
            return [("forward", _diffusion(arch, "forward")), ("train", _diffusion(arch, "train"))]
        if arch == "vae":
            return [("forward", _diffusion(arch, "forward"))]
        return [("denoise", _diffusion(arch, "denoise"))]
    if arch in SEQ2SEQ:
        return [("forward", _seq2seq(arch, False)), ("train", _seq2seq(arch, True))]
    if arch in VISION:
        return [("forward", _vision(arch, False)), ("train", _vision(arch, True))]
    if arch in AUDIO:
        return [("forward", _audio(arch))]
    steps = [("forward", _forward(arch))]
    if arch in DECODERS:
        steps.append(("train", _train(arch)))
        # a StaticCache decode step (static token/position buffers), as realmodel_cases
        # builds it for Llama/Qwen2/Gemma
        steps.append(("decode", rc.lm_static_decode(arch, **_DECODE_SIZES.get(arch, {}))))
    return steps


def register() -> list[str]:
    """Add the sweep's steps to realmodel_cases' registry; return their names."""
    import realmodel_cases as rc

    names = []
    families = [*DECODERS, *ENCODERS, *SEQ2SEQ, *VISION, *AUDIO]
    if importlib.util.find_spec("diffusers") is not None:
        families += DIFFUSION
    for arch in families:
        for kind, build in _steps(arch):
            name = f"sweep_{arch}_{kind}"
            case = rc.ModelCase(name, build, rc.LEGAL, f"{arch} {kind}")
            rc.BY_NAME[name] = case
            names.append(name)
    return names


def _child(name: str, phase: str, device: str) -> None:
    import realmodel_cases as rc

    register()
    try:
        res = rc.run_phase(name, phase, device)
    except Exception as e:  # the step could not be built or warmed up
        res = {"case": name, "phase": phase, "outcome": "setup-error", "error": repr(e)[:300]}
    print("RESULT " + json.dumps(res, default=str), flush=True)


def _run(name: str, phase: str, device: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, phase, device]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return {"case": name, "phase": phase, "outcome": "timeout"}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    return {"case": name, "phase": phase, "outcome": "crashed", "error": out[-300:]}


def _sites(r: dict[str, Any] | None) -> str:
    if not r:
        return "—"
    if r.get("outcome") in ("setup-error", "crashed", "timeout", "error") and not r.get("hazards"):
        return f"{r['outcome']}: {str(r.get('error', ''))[:80]}".replace("|", "/")
    hz = r.get("hazards") or []
    if not hz:
        return "silent"
    seen = dict.fromkeys(f"{h['code']} {Path(h['file']).name}:{h['line']}" for h in hz)
    return ", ".join(seen)


def _raw_cell(r: dict[str, Any]) -> tuple[str, bool | None]:
    if r.get("outcome") != "ok":
        return f"{r.get('outcome')}: {str(r.get('error', ''))[:80]}".replace("|", "/"), False
    if r.get("replay_match"):
        return "captured, replays equal eager", True
    return "captured, replays DIFFER from eager", False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cpu", action="store_true", help="audit only, on CPU tensors")
    where.add_argument("--gpu", action="store_true", help="raw capture, capture and audit on CUDA")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--only", default="", help="comma-separated architectures")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.child:
        _child(*args.child)
        return 0
    names = register()
    if args.only:
        wanted = set(args.only.split(","))
        names = [n for n in names if n.split("_", 1)[1].rsplit("_", 1)[0] in wanted]
    import torch
    import transformers

    device = "cuda" if args.gpu else "cpu"
    phases = ("raw", "capture", "verify", "audit") if args.gpu else ("audit",)
    t0 = time.monotonic()
    jobs = [(n, p) for n in names for p in phases]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    env_note = ""
    if not args.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # children see no CUDA: audit emulates it
        env_note = "CPU tensors standing for device tensors (no CUDA visible)"
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {pool.submit(_run, n, p, device, args.timeout): (n, p) for n, p in jobs}
        for fut in concurrent.futures.as_completed(futures):
            results[futures[fut]] = fut.result()
            # one line per finished phase, so that a run cut short still leaves its results
            print("DONE " + json.dumps(results[futures[fut]], default=str), flush=True)
    rows, disagree = [], 0
    for n in names:
        what = n[len("sweep_") :]
        audit = results.get((n, "audit"))
        if not args.gpu:
            rows.append(f"| `{what}` | {_sites(audit)} |")
            continue
        raw_text, legal = _raw_cell(results[(n, "raw")])
        cap = _sites(results.get((n, "capture")))
        ver = _sites(results.get((n, "verify")))
        aud = _sites(audit)
        raw = results[(n, "raw")]
        if raw.get("outcome") == "setup-error":
            verdict = "not judged"
        elif raw.get("outcome") == "ok" and not legal:
            # Captured, replays wrong: no host call to intercept, so only a verified replay
            # (GG901) can tell; capture and audit may stay silent.
            agree = ver.startswith("GG901") or (cap != "silent" and aud != "silent")
            verdict = "agrees (replay check)" if agree else "**DISAGREES**"
            disagree += not agree
        else:
            reported = cap != "silent" and aud != "silent"
            silent = cap == "silent" and aud == "silent" and ver == "silent"
            agree = (legal and silent) or (not legal and reported)
            verdict = "agrees" if agree else "**DISAGREES**"
            disagree += not agree
        rows.append(f"| `{what}` | {raw_text} | {cap} | {ver} | {aud} | {verdict} |")
    card = torch.cuda.get_device_name(0) if args.gpu else "CPU"
    head = [
        f"# graphguard across transformers architectures ({'GPU' if args.gpu else 'CPU audit'})",
        "",
        f"- {card}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python benchmarks/audit_sweep.py {'--gpu' if args.gpu else '--cpu'}`; "
        f"{len(names)} steps in {time.monotonic() - t0:.0f} s"
        + (f"; {env_note}" if env_note else ""),
        "",
    ]
    if args.gpu:
        head += [
            "| step | raw torch.cuda.graph | graphguard.capture() | capture(verify=1), one replay "
            "| audit | |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
    else:
        head += ["| step | audit reports |", "| --- | --- |"]
    tail = ["", f"Disagreements: {disagree}."] if args.gpu else []
    text = "\n".join([*head, *rows, *tail]) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if disagree else 0


if __name__ == "__main__":
    raise SystemExit(main())
