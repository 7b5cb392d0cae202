"""Architecture boundaries: models, engine, state and detectors stay free of Kafka and Prometheus."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE = ["streamer/models", "streamer/engine.py", "streamer/state.py", "streamer/detectors", "lab/evaluation"]
FORBIDDEN = ("kafka", "prometheus_client", "streamer.kafka", "streamer.service", "streamer.metrics")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_pure_modules_import_neither_kafka_nor_prometheus():
    files = [f for p in PURE for f in ((ROOT / p).rglob("*.py") if (ROOT / p).is_dir() else [ROOT / p])]
    assert len(files) >= 10
    bad = {str(f.relative_to(ROOT)): sorted(n for n in _imports(f) if n.split(".")[0] in FORBIDDEN or n in FORBIDDEN)
           for f in files}
    assert not {f: n for f, n in bad.items() if n}


def test_only_config_reads_the_environment():
    readers = [str(f.relative_to(ROOT)) for f in (ROOT / "streamer").rglob("*.py")
               if "os.environ" in f.read_text() or "getenv" in f.read_text()]
    assert readers == [] or readers == ["streamer/config.py"], readers


def private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """`x._name` on anything but self or cls, and `from streamer... import _name`, in one file."""
    where = path.relative_to(root)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamer"):
            found += [f"{where}:{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_")]
    return found


def test_tests_and_benchmarks_use_public_seams_only():
    """No test or benchmark reaches into a private member (of Service, the transport, the store or anything else)."""
    files = sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
    assert len(files) > 40
    assert [hit for f in files for hit in private_uses(f)] == []


def test_the_private_member_scan_finds_what_it_looks_for(tmp_path):
    # the private names are assembled, so that this file itself holds no private access for any scan to find
    attr, func = "_" + "committer", "_" + "json"
    probe = tmp_path / "probe.py"
    probe.write_text(f"svc.{attr} = None\nself._ok = 1\nx.__class__\nfrom streamer.state import {func}\n")
    assert sorted(h.split(": ", 1)[1] for h in private_uses(probe, tmp_path)) == [
        f"from streamer.state import {func}", f"svc.{attr}"]


def test_import_contracts_hold():
    """The import-linter contracts of pyproject.toml: pure modules free of Kafka and Prometheus, kafka-python only
    in the streamer.kafka package, a runtime that imports neither training, evaluation nor plotting."""
    import os

    from importlinter.cli import lint_imports

    here = os.getcwd()
    os.chdir(ROOT)  # lint-imports reads pyproject.toml from the working directory
    try:
        assert lint_imports() == 0
    finally:
        os.chdir(here)
