"""The container's CPU limit read from cgroup files (v2 cpu.max, v1 cfs quota and period), and the torch threads
that follow it when STREAMER_ENGINE__THREADS is unset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamer.cpu_quota import cpu_quota


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "want"), [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: a second thread would be throttled half of each period
    ({"cpu.max": "50000 100000\n"}, 1),  # below one CPU: still one thread
    ({"cpu.max": "400000 50000\n"}, 8),
    ({"cpu.max": "max 100000\n"}, None),  # v2 without a limit
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "400000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 4),  # v1, joined
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 without a limit
    ({"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000"}, 1),  # root is the v1 controller's folder
    ({"cpu.max": "garbage"}, None),
    ({}, None),  # no cgroup file system
])
def test_cpu_quota_reads_v1_and_v2(tmp_path: Path, files: dict[str, str], want: int | None) -> None:
    assert cpu_quota(_write(tmp_path, files)) == want


def test_v2_wins_over_v1_files(tmp_path: Path) -> None:
    _write(tmp_path, {"cpu.max": "100000 100000", "cpu/cpu.cfs_quota_us": "800000", "cpu/cpu.cfs_period_us": "100000"})
    assert cpu_quota(tmp_path) == 1


def test_default_threads_follow_the_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.config as config

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(config, "cpu_quota", lambda: None)
    assert config.resolve_threads(None) == 8, "no limit: half the cores"
    monkeypatch.setattr(config, "cpu_quota", lambda: 2)
    assert config.resolve_threads(None) == 2, "a 2-CPU limit on a 16-core node"
    monkeypatch.setattr(config, "cpu_quota", lambda: 12)
    assert config.resolve_threads(None) == 8, "a limit above half the cores changes nothing"
    assert config.resolve_threads(5) == 5, "the setting wins"
