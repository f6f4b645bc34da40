"""graphguard's structured events as JSON lines, for log pipelines and CI artifacts.

graphguard reports every hazard as a ``graphguard.hazard`` event through structlog. An
application that configured nothing can opt in to JSON lines for graphguard's events only:

- in code: ``graphguard.enable_json_logs(path_or_stream)`` (stderr when called without an
  argument; a path is appended to), undone by ``graphguard.disable_json_logs()``;
- from the environment, with no code change: ``GRAPHGUARD_LOG=json`` (stderr) or
  ``GRAPHGUARD_LOG=json:/path/to/events.jsonl``, read at graphguard's first event.

Neither touches ``structlog.configure`` or the stdlib root logger.

This program runs a guarded step with ``on_hazard="warn"`` outside any capture, so it runs in
audit mode: each hazard is logged and the step goes on. It then reads the JSON lines back and
prints selected fields. Events carry a tensor's shape, dtype and device, never its values: the
step's input holds a recognisable value that the program checks is absent from the log.

Expected output::

    device: cpu
    step ran to the end (warn policy): 4 positive values
    2 JSON events written
    event=graphguard.hazard level=warning action=logged code=GG101 kind=host-sync
      at 04_json_logs.py:65 (normalize, label='normalize', phase=audit) tensor_shape=[]
      source: top = float(x.max())  # GG101: a device value read on the host
    event=graphguard.hazard level=warning action=logged code=GG105 kind=host-sync
      ...
    no tensor values in the log: yes
    OK

Run with ``python examples/04_json_logs.py`` (exit status 0).

An application that configured structlog receives the same events through its own
configuration: graphguard logs with ``structlog.get_logger("graphguard")`` whenever the opt-in
JSON output is off. To route them into stdlib ``logging`` (handlers, levels, filters)::

    import logging, structlog
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    logging.basicConfig(level=logging.WARNING)
    # logging.getLogger("graphguard") now receives each hazard as one WARNING (or ERROR, when
    # raised) record whose message is the event as JSON: {"code": "GG101", ...,
    # "event": "graphguard.hazard", "level": "warning"}
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

import graphguard

device = "cuda" if torch.cuda.is_available() else "cpu"
SECRET = 12345.6787  # a value that must never appear in a log


@graphguard.guard(on_hazard="warn", label="normalize")
def normalize(x: torch.Tensor) -> torch.Tensor:
    top = float(x.max())  # GG101: a device value read on the host
    positive = x[x > 0]  # GG105: the output shape depends on device data
    return positive / top


def main() -> None:
    print(f"device: {device}")
    x = torch.tensor([SECRET, -1.0, 2.0, 3.0, 4.0], device=device)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graphguard.jsonl")
        graphguard.enable_json_logs(path)
        try:
            out = normalize(x)
        finally:
            graphguard.disable_json_logs()  # also closes the file
        with open(path, encoding="utf-8") as f:
            text = f.read()

    print(f"step ran to the end (warn policy): {out.numel()} positive values")
    events = [json.loads(line) for line in text.splitlines()]
    print(f"{len(events)} JSON events written")
    for e in events:
        print(
            f"event={e['event']} level={e['level']} action={e['action']} "
            f"code={e['code']} kind={e['kind']}"
        )
        print(
            f"  at {os.path.basename(e['filename'])}:{e['lineno']} ({e['function']}, "
            f"label={e['label']!r}, phase={e['phase']}) tensor_shape={e.get('tensor_shape')}"
        )
        print(f"  source: {e['source_line']}")

    codes = [e["code"] for e in events if e["event"] == "graphguard.hazard"]
    assert codes == ["GG101", "GG105"], codes
    clean = "12345" not in text
    print(f"no tensor values in the log: {'yes' if clean else 'no'}")
    assert clean
    print("OK")


if __name__ == "__main__":
    main()
