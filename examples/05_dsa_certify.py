"""Certify graphguard's reference workload, the DSA index-mask step, from Python.

``dsa`` is the lightning indexer of DeepSeek Sparse Attention in plain PyTorch. Its mask update
comes in two forms: ``update_index_mask_unpatched``, the branchy seed code that reads two GPU
reductions on the host (an ``assert`` and an ``if``), and ``update_index_mask``, the branchless,
capture-safe rewrite. The certification checks, on this machine:

1. semantics: both forms give identical masks on edge cases and random draws;
2. refusal: under graphguard the unpatched step is refused with host-sync diagnostics naming
   its validation and branch lines (in audit mode everywhere; under real capture on a GPU);
3. replay (GPU only): the patched step is captured once and replayed across sequence lengths
   with masks equal to eager. Without a GPU this claim is reported as not run, and says why.

The program runs the quick certification, prints the report and then shows the refusal
directly: ``graphguard.capture(mode="audit")`` around the unpatched update raises
``graphguard.HostSyncError`` whose diagnostic names exactly the line that
``dsa.unpatched_hazard_lines().validation`` locates, before that line's host read runs. The
patched update passes the same region with no hazard and the same mask. The same certification
runs from the command line as ``python -m graphguard certify`` (add ``--json`` for a
machine-readable certificate).

Expected output (on a CPU-only machine)::

    device: cpu
    ... 1/3 semantics of unpatched vs patched update
    ...
    graphguard certificate: DSA index-mask step
      ...
      [PASS] semantics: identical on 25 inputs (edge cases and random draws)
      [PASS] refusal (audit): host-sync at .../dsa/_mask.py:85 (validation) and :87 (branch); ...
      [SKIP] replay: needs a CUDA GPU: real capture and replay cannot run on this machine
      ...
      result: CERTIFIED (replay not run: needs a GPU)
    unpatched update refused: GG102 [host-sync] Python control flow on a device tensor
      --> .../dsa/_mask.py:85 in update_index_mask_unpatched
    the diagnostic names dsa.unpatched_hazard_lines().validation (line 85): yes
    patched update: 0 hazards, same mask as the unpatched form
    OK

Run with ``python examples/05_dsa_certify.py``: exit status 0 when the certificate holds.
"""

from __future__ import annotations

import logging
import sys

import structlog
import torch

import dsa
import graphguard
from graphguard._certify import certify, render

# The refusal below is provoked on purpose and printed by this program; the duplicate structlog
# events are turned off. (certify() records its own events instead of printing them.) Logging
# configuration belongs to the application: graphguard never configures it.
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
    cert = certify(quick=True, progress=lambda message: print(f"... {message}"))
    print(render(cert))
    refused = show_refusal()
    ok = cert.ok and refused
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
