"""The CPUs a container may use: its cgroup's CFS quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cfs_period_us).

A container limited to 2 CPUs on a 64-core node still sees 64 cores in os.cpu_count(); torch sizing its thread
pool on those would be throttled by the kernel for most of every period.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_ratio(quota: str, period: str) -> float | None:
    """quota / period, or None for no limit ('max' or a negative quota) or text that is no number."""
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_quota(root: str | os.PathLike = CGROUP_ROOT) -> int | None:
    """Whole CPUs the cgroup's quota allows (at least 1), or None when there is no limit or no cgroup to read."""
    root = Path(root)
    v2 = _read(root / "cpu.max")  # "max 100000" or "200000 100000"
    if v2 is not None:
        parts = v2.split()
        ratio = _quota_ratio(parts[0], parts[1] if len(parts) > 1 else "100000") if parts else None
    else:
        ratio = None
        for folder in (root / "cpu", root / "cpu,cpuacct", root):  # v1: the cpu controller's folder
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                ratio = _quota_ratio(quota, period)
                break
    return None if ratio is None else max(1, math.floor(ratio))
