"""Honest selection, shared by `streamer eval nab --cv` and `streamer eval smap --cv`: a declared search space of
configuration overrides, and K folds of series (files or channels) stratified by a category."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamer.errors import ConfigError

Space = tuple[tuple[dict[str, Any], ...], ...]


def configurations(space: Space, known: set[str], fixed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every configuration of a search space: the merged overrides of one choice per axis, in a fixed order.

    Fields outside `known`, and `fixed` ones (what the model was fitted with), are refused."""
    out = []
    for combo in itertools.product(*space):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        bad = sorted(set(merged) - known) + sorted(set(merged) & set(fixed))
        if bad:
            raise ConfigError(f"search space: fields {bad} are unknown or fixed (known: {sorted(known)})")
        out.append(merged)
    return out


def load_space(path: Path) -> Space:
    """A search space from JSON: a list of axes, each a list of objects of configuration field overrides."""
    axes = json.loads(Path(path).read_text())
    if not isinstance(axes, list) or not all(isinstance(a, list) and a for a in axes):
        raise ConfigError(f"{path}: a search space is a list of non-empty lists of field overrides")
    return tuple(tuple(dict(c) for c in a) for a in axes)


def split_folds(names: list[str], k: int, seed: int = 0) -> list[list[int]]:
    """K disjoint folds of series indices covering every series, stratified by category (the part before '/').

    Each category's series are shuffled with `seed`, the categories laid end to end (sorted by name) and the
    series dealt to folds in turn, so every category is spread as evenly as its size allows and folds differ in
    size by at most one series.
    """
    if not 2 <= k <= len(names):
        raise ConfigError(f"--cv {k}: needs 2 <= K <= the number of series ({len(names)})")
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_cat.setdefault(name.split("/", 1)[0], []).append(i)
    order = [i for cat in sorted(by_cat) for i in rng.permutation(by_cat[cat]).tolist()]
    folds: list[list[int]] = [[] for _ in range(k)]
    for j, i in enumerate(order):
        folds[j % k].append(i)
    return [sorted(f) for f in folds]


def named(config: dict[str, Any]) -> str:
    """One configuration's overrides as 'field=value ...'."""
    return " ".join(f"{k}={v}" for k, v in config.items()) or "(the defaults)"


def write_summary(out_dir: Path | None, name: str, summary: dict[str, Any]) -> None:
    """OUT/name as indented JSON (nothing without an output folder)."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / name).write_text(json.dumps(summary, indent=2) + "\n")


_SHARED: tuple[Callable[[Any, Any], Any], Any] | None = None


def _call_shared(item: Any) -> Any:
    """One task in a forked worker: the function and the data its parent set before forking."""
    assert _SHARED is not None
    fn, shared = _SHARED
    return fn(shared, item)


def parallel_map(fn: Callable[[Any, Any], Any], items: list[Any], shared: Any) -> list[Any]:
    """[fn(shared, item) for item in items], spread over the CPUs this process may use; `shared` (the streamed
    readings every configuration is scored on) reaches the forked workers without a copy per task. `fn` must be
    a pure function of its arguments, so the results are those of one process."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from streamer.cpu_quota import cpu_quota

    global _SHARED
    workers = min(len(items), cpu_quota() or os.cpu_count() or 1)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(shared, item) for item in items]
    _SHARED = (fn, shared)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_call_shared, items))
    finally:
        _SHARED = None
