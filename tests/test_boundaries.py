"""Architecture boundaries: models, engine, state and detectors stay free of Kafka and Prometheus."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE = ["streamer/models", "streamer/engine.py", "streamer/state.py", "streamer/detectors", "streamer/evaluation"]
FORBIDDEN = ("kafka", "prometheus_client", "streamer.transport", "streamer.service", "streamer.metrics")


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
