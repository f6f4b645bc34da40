"""The shared benchmark timer and side-stream warm-up (benchmarks/_timing.py)."""

from __future__ import annotations

import pytest

from benchmarks._timing import median_time, warm_up


def test_warm_up_runs_the_step_k_times_and_returns_the_last_result() -> None:
    """warm_up calls the step k times and hands back what the last call returned."""
    calls: list[int] = []
    assert warm_up(lambda: calls.append(len(calls)) or len(calls), 3) == 3
    assert calls == [0, 1, 2]


def test_median_time_runs_warmup_then_reps_times_calls() -> None:
    """median_time makes warmup + reps * calls calls and returns a positive time per call."""
    calls: list[None] = []
    seconds = median_time(lambda: calls.append(None), reps=5, calls=4, warmup=2, clock="host")
    assert len(calls) == 2 + 5 * 4
    assert seconds > 0


def test_median_time_rejects_an_unknown_clock() -> None:
    """A clock other than 'device' or 'host' is a ValueError, not a silent default."""
    with pytest.raises(ValueError, match="clock"):
        median_time(lambda: None, reps=1, clock="wall")
