"""Real third-party model steps: the corpus graphguard must judge like a CUDA-graph capture does.

Nobody on the project wrote the model code these steps run: each case builds a public model
(transformers, timm, torchvision) from a config with random weights, no downloads, and runs one
real step of it. A case is

- ``name``;
- ``build(device) -> Step``: builds the model and inputs on ``device`` (a string, ``"cpu"`` or
  ``"cuda"``) and returns the step with its static inputs;
- ``expect``: ``LEGAL`` (plain ``torch.cuda.graph`` captures it and replays equal to eager, so
  graphguard must stay silent) or the hazards graphguard must report, first one first: a code and
  the ``Site`` (file, line, function) the diagnostic must name. A site in library code is found by
  a fragment of the library's own source line, so it follows the installed release; a site in
  this file is the line marked ``# HAZARD``.

The bottom of the file runs one phase of one case (``raw``, ``capture``, ``audit``) and is also a
command line (``python tests/realmodel_cases.py CASE PHASE DEVICE`` prints one ``RESULT {json}``
line), so GPU tests and ``benchmarks/realmodels.py`` can run each phase in a fresh process: a
failed raw capture leaves the CUDA context unusable.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import graphguard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

WARMUP = 3  # eager calls before capture, on a side stream on CUDA (the torch.cuda.graph recipe)
REPLAYS = 3  # replays, each compared with one eager call of an identical twin
# Calls a case prepares inputs for after the warm-up: the capture, REPLAYS replays and spares
# (tests/verify_cases.py verifies 5 replays of the same cases).
CALLS = 8
SEED = 1234
VOCAB = 256
# Training steps: the parameter change over the compared steps, graph vs eager twin, must agree
# within this relative norm (a skipped or baked update gives ~1; atomics in backward far less).
STATE_REL_TOL = 0.1


@dataclass
class Step:
    """One built step. ``run()`` returns the step's outputs (a tuple of tensors).

    ``before_step(k)`` writes the static inputs for call ``k``; ``prologue()`` runs before every
    call outside the step; ``setup()`` runs once after build (a prefill); ``state()`` lists the
    tensors whose change is compared (parameters of a training step); ``modules`` are copied
    into a twin so both hold the same weights.
    """

    run: Callable[[], tuple[torch.Tensor, ...]]
    modules: list[torch.nn.Module] = field(default_factory=list)
    before_step: Callable[[int], None] = lambda k: None
    prologue: Callable[[], None] = lambda: None
    setup: Callable[[], None] = lambda: None
    state: Callable[[], list[torch.Tensor]] | None = None
    rtol: float = 1e-3
    atol: float = 1e-3


@dataclass(frozen=True)
class Site:
    """The line where a hazard must be reported: the first line of ``owner()``'s source that
    contains ``contains``, inside the function named ``function`` (default: ``owner``'s name)."""

    owner: Callable[[], Any]
    contains: str
    function: str | None = None

    def resolve(self) -> tuple[str, int, str]:
        obj = inspect.unwrap(self.owner())
        filename = os.path.realpath(inspect.getsourcefile(obj) or "")
        lines, start = inspect.getsourcelines(obj)
        hits = [start + i for i, text in enumerate(lines) if self.contains in text]
        assert hits, f"{self.contains!r} not found in the source of {obj!r}"
        return filename, hits[0], self.function or obj.__name__


@dataclass(frozen=True)
class Hazard:
    code: str
    site: Site


LEGAL: tuple[Hazard, ...] = ()


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[str], Step]
    expect: tuple[Hazard, ...]  # LEGAL, or the hazards that may be reported first
    what: str
    needs: tuple[str, ...] = ("transformers",)
    deterministic: bool = False  # deterministic cuDNN for the GPU comparison
    # False where the step cannot run eagerly without CUDA (torch.Event): no CPU warm-up, and
    # audit must report the hazard before torch's own "not supported" error
    eager_on_cpu: bool = True

    @property
    def legal(self) -> bool:
        return not self.expect

    @property
    def verdict(self) -> str:
        return "legal" if self.legal else "|".join(sorted({h.code for h in self.expect}))

    def missing(self) -> list[str]:
        """The packages this case needs that do not import here."""
        out = []
        for name in self.needs:
            try:
                importlib.import_module(name)
            except Exception:
                out.append(name)
        return out


def _lib(module: str, qualname: str) -> Callable[[], Any]:
    """A lazy reference to a library function (imported only when a site is resolved)."""

    def get() -> Any:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj

    return get


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randint(high: int, shape: tuple[int, ...], seed: int = SEED) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=_gen(seed))


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``fn`` names in its signature (APIs drift between releases)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


# --- transformers decoder LMs ---------------------------------------------------------------------
def _lm(model_type: str, device: str, train: bool = False, **over: Any) -> torch.nn.Module:
    """A tiny decoder LM of a real transformers architecture: random weights, float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type == "gpt2":
        base: dict[str, Any] = dict(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    else:
        base = dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            attention_dropout=0.0,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        )
    base.update(over)
    cfg = AutoConfig.for_model(model_type, **base)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(device)
    model.train(train)
    return model


def lm_forward(
    model_type: str, dtype: torch.dtype | None = None, **over: Any
) -> Callable[[str], Step]:
    def build(device: str) -> Step:
        model = _lm(model_type, device, **over)
        if dtype is not None:
            model = model.to(dtype)
        ids = _randint(VOCAB, (2, 16)).to(device)

        def forward() -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return (model(input_ids=ids, use_cache=False).logits,)

        return Step(forward, modules=[model])

    return build


def lm_train(model_type: str, **over: Any) -> Callable[[str], Step]:
    def build(device: str) -> Step:
        model = _lm(model_type, device, train=True, **over)
        # capturable on CUDA; without CUDA a live lr stands for it (GG602 otherwise)
        opt = graphguard.graph_safe_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-3))
        ids = _randint(VOCAB, (2, 16)).to(device)

        def train_step() -> tuple[torch.Tensor, ...]:
            opt.zero_grad(set_to_none=False)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            return (loss.detach(),)

        return Step(train_step, modules=[model], state=lambda: list(model.parameters()))

    return build


def _small_config(model_type: str, **over: Any) -> Any:
    """A tiny config of any transformers architecture (names each family uses for its sizes)."""
    from transformers import AutoConfig

    base: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        dropout_rate=0.0,
        dropout=0.0,
        pad_token_id=0,
        decoder_start_token_id=0,
        bos_token_id=0,
        eos_token_id=1,
    )
    if model_type == "t5":
        base.update(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)
    base.update(over)
    return AutoConfig.for_model(model_type, **base)


def encoder_forward(model_type: str, **over: Any) -> Callable[[str], Step]:
    """An encoder (BERT-style) forward: token ids in, last hidden states out."""

    def build(device: str) -> Step:
        from transformers import AutoModel

        model = AutoModel.from_config(_small_config(model_type, **over)).to(device).eval()
        ids = _randint(VOCAB, (2, 16)).to(device)

        def forward() -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return (model(input_ids=ids).last_hidden_state,)

        return Step(forward, modules=[model])

    return build


def seq2seq_forward(model_type: str, **over: Any) -> Callable[[str], Step]:
    """An encoder-decoder forward with the model's default cache (a DynamicCache built, and
    lazily initialised with ``torch.tensor([], device=...)``, inside every call)."""

    def build(device: str) -> Step:
        from transformers import AutoModelForSeq2SeqLM

        model = AutoModelForSeq2SeqLM.from_config(_small_config(model_type, **over))
        model = model.to(device).eval()
        ids = _randint(VOCAB, (2, 16)).to(device)
        decoder_ids = _randint(VOCAB, (2, 8), seed=SEED + 1).to(device)

        def forward() -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return (model(input_ids=ids, decoder_input_ids=decoder_ids).logits,)

        return Step(forward, modules=[model])

    return build


def ctc_forward(model_type: str, **over: Any) -> Callable[[str], Step]:
    """A speech CTC model's forward on two waveforms, the second padded (an attention mask)."""

    def build(device: str) -> Step:
        from transformers import AutoModelForCTC

        sizes: dict[str, Any] = dict(
            conv_dim=[16, 16], conv_kernel=[10, 3], conv_stride=[5, 2], num_feat_extract_layers=2,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=32,
            hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
            feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        )  # fmt: skip
        sizes.update(over)
        model = AutoModelForCTC.from_config(_small_config(model_type, **sizes)).to(device).eval()
        wave = torch.randn(2, 1600, generator=_gen()).to(device)
        mask = torch.ones(2, 1600, dtype=torch.long)
        mask[1, 1200:] = 0
        mask = mask.to(device)

        def forward() -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return (model(input_values=wave, attention_mask=mask).logits,)

        return Step(forward, modules=[model])

    return build


@dataclass
class _Decoder:
    """A StaticCache decode step: static token and position buffers, refilled before each call
    from precomputed tables by device-to-device copies (the transformers static-cache pattern)."""

    model: torch.nn.Module
    setup: Callable[[], None]
    before_step: Callable[[int], None]
    forward: Callable[[], Any]


def _static_decoder(model: torch.nn.Module, device: str, batch: int = 2) -> _Decoder:
    from transformers import StaticCache

    prompt, steps = 4, WARMUP + CALLS
    cache = StaticCache(
        **_accepted(
            StaticCache.__init__,
            dict(
                config=model.config,
                max_cache_len=32,
                max_batch_size=batch,
                batch_size=batch,
                device=device,
                dtype=torch.float32,
            ),
        )
    )
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    has_cache_position = "cache_position" in params
    prompt_ids = _randint(VOCAB, (batch, prompt)).to(device)
    toks = _randint(VOCAB, (steps, batch, 1), SEED + 1).to(device)
    pos = (torch.arange(steps) + prompt).view(steps, 1, 1).expand(steps, batch, 1)
    pos = pos.contiguous().to(device)
    tok, position, cache_position = toks[0].clone(), pos[0].clone(), pos[0, 0].clone()

    def call(ids: torch.Tensor, position_ids: torch.Tensor, cpos: torch.Tensor) -> Any:
        kw = {"input_ids": ids, "position_ids": position_ids, cache_arg: cache, "use_cache": True}
        if has_cache_position:
            kw["cache_position"] = cpos
        return model(**kw)

    def setup() -> None:  # eager prefill; allocates the static cache
        with torch.no_grad():
            p = torch.arange(prompt, device=device)
            call(prompt_ids, p.view(1, -1).expand(batch, -1), p)

    def before_step(k: int) -> None:
        tok.copy_(toks[k])
        position.copy_(pos[k])
        cache_position.copy_(pos[k, 0])

    return _Decoder(model, setup, before_step, lambda: call(tok, position, cache_position))


def lm_static_decode(model_type: str, **over: Any) -> Callable[[str], Step]:
    def build(device: str) -> Step:
        dec = _static_decoder(_lm(model_type, device, **over), device)

        def decode_step() -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return (dec.forward().logits,)

        return Step(decode_step, [dec.model], dec.before_step, setup=dec.setup)

    return build


# --- transformers generation pieces ---------------------------------------------------------------
PAD = 2


@dataclass
class _Greedy:
    """Llama StaticCache decode plus the greedy branch of ``GenerationMixin._sample``."""

    dec: _Decoder
    unfinished: torch.Tensor
    select: Callable[[], tuple[torch.Tensor, torch.Tensor]]


def _greedy(device: str) -> _Greedy:
    dec = _static_decoder(_lm("llama", device), device)
    unfinished = torch.ones(2, dtype=torch.long, device=device)
    window = _randint(VOCAB, (2, 7), SEED + 7).to(device)

    def select() -> tuple[torch.Tensor, torch.Tensor]:
        logits = dec.forward().logits
        next_logits = logits[:, -1].to(copy=True, dtype=torch.float32, device=window.device)
        next_tokens = torch.argmax(next_logits, dim=-1)
        next_tokens = next_tokens * unfinished + PAD * (1 - unfinished)
        return next_tokens, torch.cat([window, next_tokens[:, None]], dim=-1)

    return _Greedy(dec, unfinished, select)


def _greedy_step(g: _Greedy, step: Callable[[], tuple[torch.Tensor, ...]]) -> Step:
    return Step(step, [g.dec.model], g.dec.before_step, setup=g.dec.setup)


def build_greedy_criteria_outside(device: str) -> Step:
    from transformers.generation.stopping_criteria import (
        EosTokenCriteria,
        MaxLengthCriteria,
        StoppingCriteriaList,
    )

    g = _greedy(device)
    criteria = StoppingCriteriaList(
        [MaxLengthCriteria(max_length=64), EosTokenCriteria(eos_token_id=[1, 3])]
    )

    def greedy_step() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            next_tokens, seq = g.select()
            g.unfinished.copy_(g.unfinished & ~criteria(seq, None))
            return next_tokens, g.unfinished

    return _greedy_step(g, greedy_step)


def build_greedy_stop_check(device: str) -> Step:
    from transformers.generation.stopping_criteria import (
        EosTokenCriteria,
        MaxLengthCriteria,
        StoppingCriteriaList,
    )
    from transformers.generation.utils import StopCheck

    g = _greedy(device)
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=64), EosTokenCriteria(1)])
    stop_check = StopCheck()

    def greedy_step() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            next_tokens, seq = g.select()
            g.unfinished.copy_(g.unfinished & ~criteria(seq, None))
            stop_check(g.unfinished, next_tokens, seq.shape[1])  # bool(unfinished.max() == 0)
            return next_tokens, g.unfinished

    return _greedy_step(g, greedy_step)


def build_greedy_eos_inside(device: str) -> Step:
    from transformers.generation.stopping_criteria import (
        EosTokenCriteria,
        MaxLengthCriteria,
        StoppingCriteriaList,
    )

    g = _greedy(device)

    def greedy_step() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            next_tokens, seq = g.select()
            # as GenerationMixin._get_stopping_criteria does once per generate() call
            criteria = StoppingCriteriaList(
                [MaxLengthCriteria(max_length=64), EosTokenCriteria(eos_token_id=[1, 3])]
            )
            g.unfinished.copy_(g.unfinished & ~criteria(seq, None))
            return next_tokens, g.unfinished

    return _greedy_step(g, greedy_step)


def build_greedy_deferred_stop_check(device: str) -> Step:
    from transformers.generation.utils import DeferredStopCheck

    g = _greedy(device)
    ids0 = torch.zeros(2, 4, dtype=torch.long, device=device)
    stop_check = DeferredStopCheck(
        **_accepted(
            DeferredStopCheck.__init__,
            dict(input_ids=ids0, max_length=64, cache=None, cache_is_returned=False),
        )
    )

    def greedy_step() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            next_tokens, seq = g.select()
            stop_check(g.unfinished, next_tokens, seq.shape[1])
            return next_tokens, g.unfinished

    return _greedy_step(g, greedy_step)


def build_greedy_event_sync(device: str) -> Step:
    g = _greedy(device)
    done = torch.Event(device=torch.device(device), blocking=True)

    def greedy_step() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            next_tokens, _ = g.select()
            done.record()
            done.synchronize()  # HAZARD
            return next_tokens, g.unfinished

    return _greedy_step(g, greedy_step)


def build_logits_processors(device: str) -> Step:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(penalty=1.3),
            TemperatureLogitsWarper(0.7),
            TopKLogitsWarper(top_k=20),
            TopPLogitsWarper(top_p=0.9),
        ]
    )
    n = WARMUP + CALLS
    all_scores = torch.randn(n, 4, VOCAB, generator=_gen()).to(device)
    all_ids = _randint(VOCAB, (n, 4, 12)).to(device)
    scores, ids = all_scores[0].clone(), all_ids[0].clone()

    def before_step(k: int) -> None:
        scores.copy_(all_scores[k])
        ids.copy_(all_ids[k])

    def process() -> tuple[torch.Tensor, ...]:
        s = procs(ids, scores)
        return s, torch.argmax(s, dim=-1)

    return Step(process, before_step=before_step)


# --- timm and torchvision training steps ----------------------------------------------------------
def _image_batches(device: str, batch: int) -> tuple[Callable[[int], None], torch.Tensor, Any]:
    n = WARMUP + CALLS
    xs = torch.randn(n, batch, 3, 64, 64, generator=_gen()).to(device)
    ys = _randint(10, (n, batch)).to(device)
    x, y = xs[0].clone(), ys[0].clone()

    def before_step(k: int) -> None:
        x.copy_(xs[k])
        y.copy_(ys[k])

    return before_step, x, y


def timm_train(name: str, **kw: Any) -> Callable[[str], Step]:
    def build(device: str) -> Step:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10, **kw).to(device).train()
        opt = graphguard.graph_safe_optimizer(torch.optim.AdamW(model.parameters(), lr=1e-3))
        before_step, x, y = _image_batches(device, 4)

        def train_step() -> tuple[torch.Tensor, ...]:
            opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return (loss.detach(),)

        return Step(train_step, [model], before_step, state=lambda: list(model.parameters()))

    return build


def build_resnet18_sgd(device: str) -> Step:
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device).train()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before_step, x, y = _image_batches(device, 8)

    def train_step() -> tuple[torch.Tensor, ...]:
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return (loss.detach(),)

    return Step(train_step, [model], before_step, state=lambda: list(model.parameters()))


# --- a nanoGPT-style training program -------------------------------------------------------------
class CausalSelfAttention(torch.nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = torch.nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = torch.nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(torch.nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = torch.nn.LayerNorm(n_embd)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(n_embd, 4 * n_embd),
            torch.nn.GELU(),
            torch.nn.Linear(4 * n_embd, n_embd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(torch.nn.Module):
    def __init__(self, vocab: int = VOCAB, block_size: int = 32, n_embd: int = 64) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, n_embd)
        self.wpe = torch.nn.Embedding(block_size, n_embd)
        self.h = torch.nn.ModuleList(Block(n_embd, 4) for _ in range(2))
        self.ln_f = torch.nn.LayerNorm(n_embd)
        self.lm_head = torch.nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, Any]:
        device = idx.device
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
        )
        return logits, loss


def _nanogpt(device: str) -> tuple[GPT, torch.optim.Optimizer, Callable[[int], None], Any, Any]:
    """Model, AdamW with a fixed lr, and static batch buffers refilled outside the step."""
    model = GPT().to(device)
    optimizer = graphguard.graph_safe_optimizer(
        torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    )
    n = WARMUP + CALLS
    data = _randint(VOCAB, (n, 4, 17))
    X = torch.zeros(4, 16, dtype=torch.long, device=device)
    Y = torch.zeros(4, 16, dtype=torch.long, device=device)

    def get_batch(k: int) -> None:
        X.copy_(data[k, :, :-1].to(device))
        Y.copy_(data[k, :, 1:].to(device))

    return model, optimizer, get_batch, X, Y


def build_nanogpt(device: str) -> Step:
    """``device`` is the string of nanoGPT's config: "cuda" if torch.cuda.is_available() else
    "cpu"; the loop logs ``loss.item()`` after the step, outside it."""
    model, optimizer, get_batch, X, Y = _nanogpt(device)
    grad_clip = 1.0

    def train_step() -> tuple[torch.Tensor, ...]:
        optimizer.zero_grad(set_to_none=False)
        _, loss = model(X, Y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return (loss.detach(),)

    return Step(train_step, [model], get_batch, state=lambda: list(model.parameters()))


def build_nanogpt_item_in_step(device: str) -> Step:
    """The same program (without clipping), logging the loss inside the step, not after it."""
    model, optimizer, get_batch, X, Y = _nanogpt(device)
    log: list[float] = []

    def train_step() -> tuple[torch.Tensor, ...]:
        optimizer.zero_grad(set_to_none=False)
        _, loss = model(X, Y)
        loss.backward()
        optimizer.step()
        log.append(loss.item())  # HAZARD
        return (loss.detach(),)

    return Step(train_step, [model], get_batch, state=lambda: list(model.parameters()))


def _here(builder: Callable[..., Any], function: str) -> Site:
    return Site(lambda: builder, "# HAZARD", function)


_UTILS = "transformers.generation.utils"
_CRITERIA = "transformers.generation.stopping_criteria"

CASES: list[ModelCase] = [
    # decoder LMs: forward, StaticCache decode, AdamW training step
    ModelCase("llama_forward", lm_forward("llama"), LEGAL, "Llama forward, no cache"),
    ModelCase("qwen2_forward", lm_forward("qwen2"), LEGAL, "Qwen2 forward, no cache"),
    ModelCase(
        "gemma3_forward",
        lm_forward(
            "gemma3_text",
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        ),
        LEGAL,
        "Gemma3 forward, sliding and full attention layers",
    ),
    ModelCase("gpt2_forward", lm_forward("gpt2"), LEGAL, "GPT-2 forward, no cache"),
    ModelCase(
        "mixtral_forward",
        lm_forward("mixtral", num_local_experts=4, num_experts_per_tok=2),
        (
            Hazard(
                "GG103",
                Site(
                    _lib("transformers.integrations.moe", "_grouped_mm"),
                    "torch.nn.functional.grouped_mm(input.to(weight.dtype), weight, offs=offs)",
                ),
            ),
        ),
        "Mixtral MoE forward in float32: grouped_mm leaves its bf16 fast path and copies the "
        "expert offsets to the host",
    ),
    ModelCase(
        "mixtral_forward_bf16",
        lm_forward("mixtral", torch.bfloat16, num_local_experts=4, num_experts_per_tok=2),
        LEGAL,
        "Mixtral MoE forward in bfloat16 (grouped_mm's fast path on a 9.x/10.x card)",
    ),
    ModelCase(
        "falcon_forward",
        lm_forward("falcon", multi_query=True, new_decoder_architecture=False),
        (
            Hazard(
                "GG401",
                Site(
                    _lib(
                        "transformers.models.falcon.modeling_falcon", "FalconAttention._split_heads"
                    ),
                    "fused_qkv[..., [-2], :]",
                ),
            ),
        ),
        "Falcon (multi-query) forward: fused_qkv[..., [-2], :] indexes with a Python list",
    ),
    ModelCase(
        "led_forward",
        seq2seq_forward(
            "led",
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            attention_window=[16, 16],
        ),
        (
            Hazard(
                "GG101",
                Site(
                    _lib("transformers.models.led.modeling_led", "LEDEncoder.forward"),
                    "is_global_attn = is_index_global_attn.flatten().any().item()",
                ),
            ),
        ),
        "LED (Longformer attention) forward: `.item()` decides whether any token attends globally",
    ),
    ModelCase(
        "wav2vec2_forward",
        ctc_forward("wav2vec2"),
        (
            Hazard(
                "GG401",
                Site(
                    _lib(
                        "transformers.models.wav2vec2.modeling_wav2vec2",
                        "Wav2Vec2PreTrainedModel._get_feature_vector_attention_mask",
                    ),
                    "output_lengths - 1)] = 1",
                ),
            ),
        ),
        "wav2vec2 CTC forward with a padding mask: `mask[(rows, lengths - 1)] = 1` makes "
        "index_put_ copy the number 1 from host memory",
    ),
    ModelCase("bert_forward", encoder_forward("bert"), LEGAL, "BERT encoder forward"),
    ModelCase(
        "t5_forward",
        seq2seq_forward("t5"),
        LEGAL,
        "T5 forward with its default DynamicCache, created and filled inside the step",
    ),
    ModelCase("llama_static_decode", lm_static_decode("llama"), LEGAL, "Llama StaticCache decode"),
    ModelCase("qwen2_static_decode", lm_static_decode("qwen2"), LEGAL, "Qwen2 StaticCache decode"),
    ModelCase(
        "gemma_static_decode",
        lm_static_decode("gemma", head_dim=16),
        LEGAL,
        "Gemma StaticCache decode",
    ),
    ModelCase("llama_train_adamw", lm_train("llama"), LEGAL, "Llama training step, AdamW"),
    ModelCase(
        "qwen3_train_adamw", lm_train("qwen3", head_dim=16), LEGAL, "Qwen3 training step, AdamW"
    ),
    ModelCase("gpt2_train_adamw", lm_train("gpt2"), LEGAL, "GPT-2 training step, AdamW"),
    # generation pieces
    ModelCase(
        "logits_processors_argmax",
        build_logits_processors,
        LEGAL,
        "repetition penalty, temperature, top-k, top-p, then argmax",
    ),
    ModelCase(
        "greedy_criteria_outside",
        build_greedy_criteria_outside,
        LEGAL,
        "greedy decode step; MaxLengthCriteria + EosTokenCriteria built before the step",
    ),
    ModelCase(
        "greedy_stop_check",
        build_greedy_stop_check,
        (Hazard("GG102", Site(_lib(_UTILS, "StopCheck.__call__"), "unfinished_sequences.max()")),),
        "greedy decode step ending in StopCheck: bool(unfinished_sequences.max() == 0)",
    ),
    ModelCase(
        "greedy_eos_criteria_inside",
        build_greedy_eos_inside,
        (
            Hazard(
                "GG401",
                Site(_lib(_CRITERIA, "EosTokenCriteria.__call__"), "self.eos_token_id.to("),
            ),
        ),
        "greedy decode step building EosTokenCriteria inside: .to(device) of host token ids",
    ),
    ModelCase(
        "greedy_deferred_stop_check",
        build_greedy_deferred_stop_check,
        (
            # on a GPU the first hazard is the non-blocking copy into the pinned flag; where
            # that flag is not pinned (CPU), the event synchronize two lines later
            Hazard("GG202", Site(_lib(_UTILS, "DeferredStopCheck.__call__"), "non_blocking=True")),
            Hazard("GG107", Site(_lib(_UTILS, "DeferredStopCheck.__call__"), ".synchronize()")),
        ),
        "greedy decode step ending in DeferredStopCheck: torch.Event record/synchronize",
        eager_on_cpu=False,
    ),
    ModelCase(
        "greedy_event_sync",
        build_greedy_event_sync,
        (Hazard("GG107", _here(build_greedy_event_sync, "greedy_step")),),
        "greedy decode step that waits on a torch.Event it records",
        eager_on_cpu=False,
    ),
    # timm and torchvision
    ModelCase(
        "timm_vit_tiny_train",
        timm_train("vit_tiny_patch16_224", img_size=64),
        LEGAL,
        "timm vit_tiny training step, AdamW",
        needs=("timm",),
    ),
    ModelCase(
        "timm_convnext_atto_train",
        timm_train("convnext_atto"),
        LEGAL,
        "timm convnext_atto training step, AdamW",
        needs=("timm",),
    ),
    ModelCase(
        "torchvision_resnet18_sgd",
        build_resnet18_sgd,
        LEGAL,
        "torchvision resnet18 training step, SGD(momentum), zero_grad(set_to_none=False)",
        needs=("torchvision",),
        deterministic=True,
    ),
    # a nanoGPT-style program
    ModelCase(
        "nanogpt_train",
        build_nanogpt,
        LEGAL,
        "nanoGPT-style step: string device, AdamW, fixed lr, clip_grad_norm_",
        needs=(),
    ),
    ModelCase(
        "nanogpt_item_in_step",
        build_nanogpt_item_in_step,
        (Hazard("GG101", _here(build_nanogpt_item_in_step, "train_step")),),
        "the nanoGPT step logging loss.item() inside the step",
        needs=(),
    ),
]

BY_NAME = {c.name: c for c in CASES}


# --- running one phase of one case ----------------------------------------------------------------
def prepare(case: ModelCase, device: str) -> Step:
    """Build, set up and warm up a case; the next call's inputs are in place."""
    torch.manual_seed(SEED)
    step = case.build(device)
    step.setup()
    if case.eager_on_cpu or device.startswith("cuda"):
        warm_up(step, device)
    step.before_step(WARMUP)
    step.prologue()
    return step


def warm_up(step: Step, device: str) -> None:
    def calls() -> None:
        for k in range(WARMUP):
            step.before_step(k)
            step.prologue()
            step.run()

    if not device.startswith("cuda"):
        calls()
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        calls()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def diagnostic_record(d: Any) -> dict[str, Any]:
    return {
        "code": d.code,
        "file": os.path.realpath(d.filename),
        "line": d.lineno,
        "function": d.function,
        "source": (d.source_line or "").strip()[:160],
    }


def _flat(out: Any) -> list[torch.Tensor]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t.detach().clone() for t in items if isinstance(t, torch.Tensor)]


def _max_diff(got: list[torch.Tensor], ref: list[torch.Tensor], rtol: float, atol: float) -> Any:
    """(match, max abs difference) of two output lists."""
    worst, match = 0.0, len(got) == len(ref)
    for a, b in zip(got, ref, strict=False):
        if a.shape != b.shape:
            return False, None
        a, b = a.double().cpu(), b.double().cpu()
        if a.numel():
            worst = max(worst, float((a - b).abs().nan_to_num(float("inf")).max()))
        match = match and torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    return match, worst


PHASES = ("raw", "capture", "guard", "audit")


def run_phase(name: str, phase: str, device: str) -> dict[str, Any]:
    """One phase of one case, after the warm-up:

    - ``raw``: plain ``torch.cuda.graph`` capture (graphguard never imported);
    - ``capture``: ``graphguard.capture(mode="capture")``;
    - ``guard``: the step decorated with ``@graphguard.guard``, inside a plain capture;
    - ``verify``: ``graphguard.capture(verify=1)``, its first replay checked against the step
      run eagerly (``cap.replay(eager=..., outputs=...)``): what graphguard can say about a
      capture that succeeds but replays wrong (GG901);
    - ``audit``: ``graphguard.capture(mode="audit", on_hazard="warn")``, eagerly.

    Captures are replayed ``REPLAYS`` times, each replay compared with an eager call of a twin
    holding the same weights and inputs (and, for training steps, the parameter change).
    """
    case = BY_NAME[name]
    res: dict[str, Any] = {"case": name, "phase": phase, "device": device, "hazards": []}
    if phase != "raw":
        import graphguard
    if case.deterministic and device.startswith("cuda"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    a = prepare(case, device)
    if phase == "audit":
        cap = None
        try:
            with graphguard.capture(mode="audit", on_hazard="warn", label=name) as cap:
                a.run()
            res["outcome"] = "ok"
        except Exception as e:
            res["outcome"], res["error"] = "error", f"{type(e).__name__}: {e}"[:400]
        res["hazards"] = [diagnostic_record(d) for d in (cap.hazards if cap else [])]
        return res
    b = prepare(case, device)
    with torch.no_grad():
        for ma, mb in zip(a.modules, b.modules, strict=True):
            mb.load_state_dict(ma.state_dict())
    state_a = [t.detach().clone() for t in a.state()] if a.state else []
    state_b = [t.detach().clone() for t in b.state()] if b.state else []
    out: Any = None
    replay: Callable[[], Any] | None = None
    try:
        if phase == "capture":
            with graphguard.capture(mode="capture", label=name) as cap:
                out = a.run()
            replay = cap.replay
        elif phase == "verify":
            with graphguard.capture(mode="capture", label=name, verify=1) as cap:
                out = a.run()
            res["outcome"] = "ok"
            a.before_step(WARMUP)
            a.prologue()
            cap.replay(eager=a.run, outputs=out)  # raises GG901 when the replay is wrong
        else:
            run = graphguard.guard(a.run) if phase == "guard" else a.run
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = run()
            replay = g.replay
        res["outcome"] = "ok"
    except Exception as e:
        res["outcome"] = "hazard" if hasattr(e, "diagnostic") else "error"
        res["error"] = f"{type(e).__name__}: {e}"[:400]
        if hasattr(e, "diagnostic"):
            res["hazards"] = [diagnostic_record(e.diagnostic)]
    if replay is not None:
        try:
            res.update(_compare_replays(a, b, out, replay, state_a, state_b))
        except Exception as e:
            res["replay_match"], res["replay_error"] = False, f"{type(e).__name__}: {e}"[:400]
    try:
        res["healthy_after"] = float(torch.ones(4, device=device).sum().item()) == 4.0
    except Exception as e:
        res["healthy_after"] = False
        res["health_error"] = f"{type(e).__name__}: {e}"[:200]
    return res


def _compare_replays(
    a: Step,
    b: Step,
    out: Any,
    replay: Callable[[], Any],
    state_a: list[torch.Tensor],
    state_b: list[torch.Tensor],
) -> dict[str, Any]:
    match, worst = True, 0.0
    for r in range(REPLAYS):
        a.before_step(WARMUP + r)
        a.prologue()
        replay()
        torch.cuda.synchronize()
        got = _flat(out)
        b.before_step(WARMUP + r)
        b.prologue()
        ok, diff = _max_diff(got, _flat(b.run()), a.rtol, a.atol)
        match = match and ok
        worst = max(worst, float("inf") if diff is None else diff)
    res: dict[str, Any] = {}
    if a.state and b.state:
        da = [x.detach().double() - x0.double() for x, x0 in zip(a.state(), state_a, strict=True)]
        db = [y.detach().double() - y0.double() for y, y0 in zip(b.state(), state_b, strict=True)]
        num = sum(float((x - y).pow(2).sum()) for x, y in zip(da, db, strict=True)) ** 0.5
        den = sum(float(y.pow(2).sum()) for y in db) ** 0.5
        rel = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
        res["state_rel_diff"] = rel
        match = match and rel < STATE_REL_TOL
    res["replay_match"], res["max_abs_diff"] = match, worst
    return res


def raw_is_legal(raw: dict[str, Any]) -> bool:
    """Plain torch captured the step and every replay matched the eager twin."""
    return raw.get("outcome") == "ok" and raw.get("replay_match") is True


def run_in_subprocess(name: str, phase: str, device: str, timeout: float) -> dict[str, Any]:
    """``run_phase`` in a fresh interpreter (a failed raw capture poisons its CUDA context)."""
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.abspath(__file__), name, phase, device]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, errors="replace"
        )
    except subprocess.TimeoutExpired:
        return {"case": name, "phase": phase, "outcome": "timeout", "hazards": []}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {
        "case": name,
        "phase": phase,
        "outcome": "crash",
        "hazards": [],
        "error": f"rc={proc.returncode}: " + " | ".join(tail)[-600:],
    }


def run_many(
    pairs: list[tuple[str, str]], device: str, jobs: int, timeout: float
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (case, phase) pair, each in its own process, ``jobs`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {p: pool.submit(run_in_subprocess, *p, device, timeout) for p in pairs}
        return {p: f.result() for p, f in futures.items()}


def main(argv: list[str]) -> int:
    name, phase, device = argv
    try:
        res = run_phase(name, phase, device)
    except Exception as e:
        res = {"case": name, "phase": phase, "outcome": "setup-error", "hazards": []}
        res["error"] = f"{type(e).__name__}: {e}"[:400]
        res["traceback"] = traceback.format_exc()[-1500:]
    print("RESULT " + json.dumps(res, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
