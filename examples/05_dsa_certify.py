"""Certify graphguard's reference workload, the DSA index-mask step, from Python.

``dsa`` is the lightning indexer of DeepSeek Sparse Attention in plain PyTorch. Its mask update
comes in two forms: ``update_index_mask_unpatched``, the branchy seed code that reads two GPU
reductions on the host (an ``assert`` and an ``if``), and ``update_index_mask``, the branchless,
capture-safe rewrite. ``graphguard.certify("dsa")`` checks, on this machine:

1. semantics: both forms give identical results on edge cases and random draws;
2. refusal: under graphguard the unpatched step is refused with host-sync diagnostics naming
   its validation and branch lines (in audit mode everywhere; under real capture on a GPU);
3. replay (GPU only): the patched step is captured once and replayed across sequence lengths
   with masks equal to eager.

The result line says which claims were certified and which did not run: on a GPU
``CERTIFIED``; without one ``PARTIAL``, naming refusal under capture and replay as not run
because they need a CUDA GPU. ``cert.ok`` is true when no claim failed, ``cert.certified`` only
when every claim ran and passed.

The program runs the quick certification, prints the certificate and then shows the refusal
directly: ``graphguard.capture(mode="audit")`` around the unpatched update raises
``graphguard.HostSyncError`` whose diagnostic names exactly the line that
``dsa.unpatched_hazard_lines().validation`` locates, before that line's host read runs. The
patched update passes the same region with no hazard and the same mask. The same certification
runs from the command line as ``graphguard certify`` (add ``--json`` for a machine-readable
certificate); ``docs/certify.md`` shows how to certify a step of your own.

Expected output (on a CPU-only machine)::

    device: cpu
    ... 1/3 semantics: the safe step against its reference
    ...
    graphguard certificate: workload dsa
      ...
      [PASS] semantics: identical on 26 inputs (step vs unsafe step 3, mask update 23)
      [PASS] refusal (audit): host-sync at .../dsa/_mask.py:85 and :87 (exactly the expected ...
      [SKIP] refusal (capture): needs a CUDA GPU
      [SKIP] replay: needs a CUDA GPU
      ...
      result: PARTIAL — certified: semantics, refusal (audit); not run (needs a CUDA GPU): ...
    unpatched update refused: GG102 [host-sync] Python control flow on a device tensor
      --> .../dsa/_mask.py:85 in update_index_mask_unpatched
    the diagnostic names dsa.unpatched_hazard_lines().validation (line 85): yes
    patched update: 0 hazards, same mask as the unpatched form
    OK

Run with ``python examples/05_dsa_certify.py``: exit status 0 when no claim failed and the
refusal was shown.
"""

from __future__ import annotations

import logging
import sys

import structlog
import torch

import dsa
import graphguard

# certify() and the refusal below provoke hazards on purpose, and this program prints its own
# report of them, so structlog's output is turned off. Logging configuration belongs to the
# application: graphguard never configures it.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

device = "cuda" if torch.cuda.is_available() else "cpu"


def show_refusal() -> bool:
    where = dsa.unpatched_hazard_lines()
    inf = float("-inf")
    mask = torch.full((2, 16), inf, device=device)
    # valid positions, the -1 sentinel and an out-of-range index (16 >= L) in one batch
    idx = torch.tensor([[0, 3, -1, 7], [15, 16, 2, -1]], device=device)
    expected = dsa.update_index_mask_unpatched(mask.clone(), idx)  # eager, outside any region

    try:
        with graphguard.capture(mode="audit"):
            dsa.update_index_mask_unpatched(mask.clone(), idx)
    except graphguard.HostSyncError as err:
        d = err.diagnostic
        header = str(err).splitlines()[:2]
        print(f"unpatched update refused: {header[0]}\n{header[1]}")
        named = d.filename == where.file and d.lineno == where.validation
        print(
            f"the diagnostic names dsa.unpatched_hazard_lines().validation "
            f"(line {where.validation}): {'yes' if named else 'no'}"
        )
    else:
        print("the unpatched update was NOT refused")
        return False

    with graphguard.capture(mode="audit") as cap:
        patched = dsa.update_index_mask(mask.clone(), idx)
    same = torch.equal(patched, expected)
    print(
        f"patched update: {len(cap.hazards)} hazards, "
        f"{'same mask as' if same else 'a different mask from'} the unpatched form"
    )
    return named and same and not cap.hazards


def main() -> int:
    print(f"device: {device}")
    cert = graphguard.certify("dsa", quick=True, progress=lambda message: print(f"... {message}"))
    print(cert)
    refused = show_refusal()
    ok = cert.ok and refused
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
