"""graphguard: safe CUDA-graph capture for PyTorch.

Hazards (host syncs, pinned allocation, stream escapes, pageable copies, RNG reseeding, stale
host scalars) are caught *before* the illegal call, reported as one structured diagnostic that
names your line, and the process stays healthy. Without a GPU, audit mode finds the same hazards.
"""

import warnings

# torch warns at import when numpy is missing; graphguard never needs numpy, so a fresh
# environment without it should not print that warning on every command.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch  # noqa: F401

from ._blocks import BlockReport, validate_blocks
from ._capture import Capture, capture
from ._certify import Certificate, certify
from ._diagnostic import Diagnostic, TensorInfo
from ._dist import dist_timeout
from ._errors import (
    AgreementTimeoutError,
    CollectiveError,
    ConfigError,
    DistributedError,
    GraphGuardError,
    GraphLimitError,
    HazardError,
    HostBufferReadError,
    HostSyncError,
    NotCapturedError,
    PageableCopyError,
    PeerFailedError,
    PinnedAllocError,
    ReplayMismatchError,
    RngStateError,
    StaleHostScalarError,
    StaleOutputError,
    StreamEscapeError,
)
from ._graphed import Graphed, GraphedModule, graphed
from ._guard import guard
from ._log import disable_json_logs, enable_json_logs
from ._optim import graph_safe_optimizer
from ._rules import KINDS, RULES, Rule, get_rule
from ._session import mark_host
from ._state import allow
from ._verify import Verify
from ._workload import Workload, marked_lines

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "RULES",
    "AgreementTimeoutError",
    "BlockReport",
    "Capture",
    "Certificate",
    "CollectiveError",
    "ConfigError",
    "Diagnostic",
    "DistributedError",
    "GraphGuardError",
    "GraphLimitError",
    "Graphed",
    "GraphedModule",
    "HazardError",
    "HostBufferReadError",
    "HostSyncError",
    "NotCapturedError",
    "PageableCopyError",
    "PeerFailedError",
    "PinnedAllocError",
    "ReplayMismatchError",
    "RngStateError",
    "Rule",
    "StaleHostScalarError",
    "StaleOutputError",
    "StreamEscapeError",
    "TensorInfo",
    "Verify",
    "Workload",
    "__version__",
    "allow",
    "capture",
    "certify",
    "disable_json_logs",
    "dist_timeout",
    "enable_json_logs",
    "get_rule",
    "graph_safe_optimizer",
    "graphed",
    "guard",
    "mark_host",
    "marked_lines",
    "validate_blocks",
]
