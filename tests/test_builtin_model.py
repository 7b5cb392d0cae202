"""The built-in checkpoint served without STREAMER_MODEL__CHECKPOINT, the explicit random model, and the demo's
count of NAB's labelled windows alerted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from lab.demo import labelled_windows, run_demo, window_summary
from streamer.checkpoints import read_meta
from streamer.config import load_settings
from streamer.detection import PRODUCT_PIPELINE
from streamer.errors import ConfigError
from streamer.model_source import BUILTIN_CHECKPOINT, check_servable, load_checkpoint, served_model
from streamer.service import Service

ROOT = Path(__file__).resolve().parents[1]
NAB = sorted((ROOT / "data" / "nab" / "realAWSCloudwatch").glob("*.csv"))


@pytest.fixture
def no_model_env(monkeypatch):
    for name in ("CHECKPOINT", "FAMILY", "N_FEATURES", "HIDDEN", "LAYERS", "SEED"):
        monkeypatch.delenv(f"STREAMER_MODEL__{name}", raising=False)


def test_builtin_checkpoint_is_small_servable_and_names_the_rows_it_was_fitted_on(no_model_env):
    size = sum(p.stat().st_size for p in BUILTIN_CHECKPOINT.iterdir())
    assert size < 2 << 20
    meta = read_meta(BUILTIN_CHECKPOINT)
    assert meta["detectors"] == PRODUCT_PIPELINE.to_dict()
    assert len(meta["normalization"]["mean"]) == len(meta["normalization"]["std"]) == 1
    data = meta["training"]["data"]
    assert data["files"] == [str(p.relative_to(ROOT)) for p in NAB]
    for path in NAB:
        n = sum(1 for _ in path.open()) - 1  # the header
        rows = data["rows"][str(path.relative_to(ROOT))]
        assert rows["train"][0] == 0 and rows["train"][1] == rows["val"][0] and rows["val"][1] <= int(0.15 * n)
    assert sorted(meta["data_fingerprint"]["files_sha256"]) == sorted(p.name for p in NAB)
    served = check_servable(load_checkpoint(BUILTIN_CHECKPOINT), load_settings())
    assert served.head == "forecast" and served.model.config.horizon == 1 and served.channels == ("value",)


def test_service_without_a_checkpoint_setting_serves_the_builtin_model(no_model_env):
    service = Service(load_settings(engine={"device": "cpu"}, metrics={"enabled": False}))
    version = read_meta(BUILTIN_CHECKPOINT)["weights_sha256"][:12]
    assert (service.served.name, service.served.version) == ("builtin-nab-aws-gru", version)
    info = f'streamer_model_info{{family="gru",name="builtin-nab-aws-gru",version="{version}"}} 1.0'
    assert info in generate_latest(service.metrics.registry).decode()


def test_the_random_setting_serves_the_seeded_network_the_model_settings_describe(no_model_env):
    def weights(seed: int) -> list[torch.Tensor]:
        settings = load_settings(model={"checkpoint": "random", "family": "lstm", "hidden": 8, "seed": seed})
        served = served_model(settings, "cpu")
        assert (served.name, served.family, served.model.config.hidden) == (f"lstm-h8-seed{seed}", "lstm", 8)
        return list(served.model.state_dict().values())

    same, again, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(a, b) for a, b in zip(same, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(same, other, strict=True))


def test_random_model_settings_without_the_random_checkpoint_are_refused(no_model_env, monkeypatch):
    with pytest.raises(ConfigError, match="STREAMER_MODEL__CHECKPOINT: STREAMER_MODEL__HIDDEN set"):
        load_settings(model={"hidden": 4})
    monkeypatch.setenv("STREAMER_MODEL__FAMILY", "lstm")
    with pytest.raises(ConfigError, match=r"STREAMER_MODEL__FAMILY set.*STREAMER_MODEL__CHECKPOINT=random"):
        load_settings(model={"checkpoint": str(BUILTIN_CHECKPOINT)})
    monkeypatch.setenv("STREAMER_MODEL__CHECKPOINT", "random")
    assert load_settings().model.family == "lstm"


def test_window_summary_counts_windows_alerted_and_alerts_outside_them():
    windows = {"a": [(100, 200), (500, 600)], "b": [(10, 20)]}
    alerts = [{"stream": "a", "start_ts": 150}, {"stream": "a", "start_ts": 180}, {"stream": "a", "start_ts": 300},
              {"stream": "b", "start_ts": 21}, {"stream": "unlabelled", "start_ts": 15}]
    assert window_summary(alerts, windows) == {"windows": 3, "alerted": 1, "outside": 2, "alerts": 4}


def test_the_shipped_series_have_nabs_five_windows():
    windows = labelled_windows(NAB)
    assert {k: len(v) for k, v in windows.items()} == {
        "ec2_cpu_utilization_24ae8d": 2, "ec2_cpu_utilization_5f5533": 2, "ec2_cpu_utilization_825cc2": 1}
    assert windows["ec2_cpu_utilization_825cc2"] == [(1397546640000, 1397649240000)]  # 2014-04-15 07:24 .. 16 11:54


def test_demo_ends_with_the_labelled_windows_alerted(kafka_bootstrap, no_model_env, capsys):
    assert run_demo(kafka_bootstrap, NAB, every=5000, timeout_s=120) == 0
    out = capsys.readouterr().out
    assert "demo: model builtin-nab-aws-gru" in out and "alert firing" in out and "alert resolved" in out
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"demo: (\d+) alerts fired \((\d+) resolved\); (\d+) of 5 labelled anomaly windows alerted, "
                     r"(\d+) of (\d+) alerts on labelled series outside every window", last)
    assert m, last
    fired, _, alerted, outside, on_labelled = map(int, m.groups())
    assert fired == on_labelled and outside <= fired and 0 <= alerted <= 5


def test_the_package_data_and_the_image_carry_the_builtin_checkpoint():
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["streamer"]
    shipped = {str(p.relative_to(BUILTIN_CHECKPOINT.parent)) for p in BUILTIN_CHECKPOINT.iterdir()}
    assert shipped == {"nab-aws-gru/meta.json", "nab-aws-gru/model.safetensors"}
    assert all(any(fnmatch.fnmatch(f"builtin/{f}", pat) for pat in patterns) for f in shipped)
    assert "COPY streamer ./streamer" in (ROOT / "Dockerfile").read_text()
