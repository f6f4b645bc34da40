"""validate_blocks reports missing, eager and unrequested graphed blocks."""

from __future__ import annotations

import pytest
import structlog
import torch

import graphguard

# These exercise graphed's CPU path (eager calls under audit); on a CUDA machine they would
# capture CPU tensors, which means nothing (the graphed blocks here run on CPU tensors).
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU path of graphed")


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.mlp(self.attn(x))


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Block() for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_missing_requests_are_reported_without_a_gpu() -> None:
    """Names, patterns and types that match nothing are listed as missing."""
    report = graphguard.validate_blocks(
        Model(), ["layers.0.attn", "layers.*.mlp", "layers.9", "decoder.*", torch.nn.Conv2d]
    )
    assert report.missing == ("layers.9", "decoder.*", "Conv2d")
    assert not report.ok


def test_requested_but_not_graphed_blocks_are_eager() -> None:
    """A requested block that exists but is a plain module is reported as eager."""
    report = graphguard.validate_blocks(Model(), ["layers.1.mlp"])
    assert report.eager == (("layers.1.mlp", report.eager[0][1]),)
    assert "not graphed" in report.eager[0][1]


def test_graphed_blocks_are_checked_at_runtime() -> None:
    """Graphed blocks that captured pass; never-called ones are eager; extra ones unrequested."""
    model = Model()
    model.layers[0] = graphguard.graphed(model.layers[0], warmup=0)
    model.layers[1] = graphguard.graphed(model.layers[1], warmup=0)
    model.layers[2] = graphguard.graphed(model.layers[2], warmup=0)
    x = torch.randn(2, 4)
    model.layers[0](x)
    model.layers[0](x)
    with structlog.testing.capture_logs() as logs:
        report = graphguard.validate_blocks(model, ["layers.0", "layers.1"])
    assert report.graphed == ("layers.0",)
    assert [name for name, _ in report.eager] == ["layers.1"]
    assert "never captured" in report.eager[0][1]
    assert report.unrequested == ("layers.2",)
    findings = sorted(e["finding"] for e in logs if e["event"] == "graphguard.blocks")
    assert findings == ["eager", "unrequested"]


def test_types_match_the_graphed_modules_inner_class() -> None:
    """A type request matches a graphed block by the class of the module it wraps."""
    model = Model()
    model.layers[0] = graphguard.graphed(model.layers[0], warmup=0)
    model.layers[0](torch.randn(2, 4))
    report = graphguard.validate_blocks(model, [Block])
    assert report.graphed == ("layers.0",)
    assert {name for name, _ in report.eager} == {"layers.1", "layers.2"}


def test_fallen_back_block_is_reported_with_reason() -> None:
    """A graphed block that fell back to eager is reported with the hazard that caused it."""

    class Syncing(torch.nn.Module):
        def forward(self, x):
            return x / float(x.abs().max())

    model = torch.nn.Sequential(graphguard.graphed(Syncing(), warmup=0, on_hazard="fallback"))
    model(torch.ones(3))
    report = graphguard.validate_blocks(model, ["0"])
    assert report.eager and "fell back" in report.eager[0][1] and "GG101" in report.eager[0][1]


@pytest.mark.parametrize("bad", ["layers.0", [""], [3], ["layers..0"], [int]])
def test_malformed_requests_raise_config_error(bad) -> None:
    """A request that is not a list of names, patterns or module types is a ConfigError."""
    with pytest.raises(graphguard.ConfigError):
        graphguard.validate_blocks(Model(), bad)
