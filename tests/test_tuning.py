"""Process-wide settings changed for serving are restored when serving ends, however it ends."""

from __future__ import annotations

import sys

import pytest
import torch

from streamer.tuning import serving_process


def test_threads_and_switch_interval_are_set_then_restored() -> None:
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    with serving_process(1, 1.0):
        assert torch.get_num_threads() == 1 and sys.getswitchinterval() == pytest.approx(0.001)
    assert torch.get_num_threads() == threads and sys.getswitchinterval() == interval


def test_they_are_restored_after_a_failure_too() -> None:
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    with pytest.raises(RuntimeError), serving_process(1, 2.0):
        raise RuntimeError("the loop failed")
    assert torch.get_num_threads() == threads and sys.getswitchinterval() == interval
