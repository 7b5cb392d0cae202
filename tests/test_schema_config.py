"""Wire-format decoding and settings: clear reasons for bad input, setting names in configuration errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from streamer.config import load_settings, settings_markdown
from streamer.errors import ConfigError, InvalidRecord
from streamer.schema import DEAD_LETTER_REASONS, dead_letter, dead_letter_original, decode


def test_decode_single_reading_and_chunk():
    one = decode(b'{"stream":"pump-17","ts":5,"values":[0.5,2]}', 2)
    assert one.stream == "pump-17" and one.ts.tolist() == [5]
    np.testing.assert_array_equal(one.values, np.array([[0.5, 2.0]], dtype=np.float32))
    chunk = decode(b'{"stream":"p","ts":[1,2,3],"values":[[1,2],[3,4],[5,6]]}', 2)
    assert chunk.ts.dtype == np.int64 and chunk.values.shape == (3, 2)


def test_named_channels_map_through_channel_names():
    d = decode(b'{"stream":"p","ts":1,"values":{"rpm":1200,"temp":21.5}}', 2, channels=("temp", "rpm"))
    assert d.values.tolist() == [[21.5, 1200.0]]


@pytest.mark.parametrize("raw, reason", [
    (None, "empty"),
    (b"", "empty"),
    (b"{not json", "invalid_json"),
    (b'{"stream":"p","values":[1]}', "invalid_schema"),
    (b'{"stream":"","ts":1,"values":[1]}', "invalid_schema"),
    (b'{"stream":"p","ts":1,"values":[1],"extra":1}', "invalid_schema"),
    (b'{"stream":"p","ts":"x","values":[1]}', "invalid_schema"),
    (b'{"stream":"p","ts":1,"values":[1,2,3]}', "wrong_shape"),
    (b'{"stream":"p","ts":[1,2],"values":[[1]]}', "wrong_shape"),
    (b'{"stream":"p","ts":1,"values":[NaN]}', "non_finite"),
    (b'{"stream":"p","ts":1,"values":[1e300]}', "non_finite"),
    (b'{"stream":"p","ts":1,"values":{"temp":1}}', "named_channels_unsupported"),
    (b"x" * 2000, "oversize"),
])
def test_bad_records_get_a_reason(raw, reason):
    with pytest.raises(InvalidRecord) as err:
        decode(raw, 1, max_bytes=1000)
    assert err.value.reason == reason


def test_dead_letter_keeps_original_bytes_and_origin():
    raw = b"\xff\xfe not utf-8"
    msg = json.loads(dead_letter(raw, "invalid_json", "value is not JSON", "readings", 3, 42))
    assert dead_letter_original(msg) == raw and not msg["original_truncated"]
    assert (msg["original_size"], msg["original_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert (msg["topic"], msg["partition"], msg["offset"], msg["reason"]) == ("readings", 3, 42, "invalid_json")


def test_dead_letter_of_a_huge_record_stays_small():
    raw = bytes(range(128, 256)) * 8192  # 1 MiB of bytes that are not UTF-8: escaped, each would take 6 characters
    msg = dead_letter(raw, "oversize", "x" * 50_000, "readings", 0, 7, max_original=4096)
    assert len(msg) < 4096 * 4 // 3 + 2000
    body = json.loads(msg)
    assert dead_letter_original(body) == raw[:4096] and body["original_truncated"]
    assert (body["original_size"], body["original_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert len(body["detail"]) < 1100


@pytest.mark.parametrize("depth", [2_000, 5_000, 100_000])
def test_deep_nesting_is_invalid_json_not_a_crash(depth):
    nested = b"[" * depth + b"]" * depth
    for raw in (nested, b'{"stream":"p","ts":1,"values":' + nested + b"}"):
        with pytest.raises(InvalidRecord) as err:
            decode(raw, 1, max_bytes=1 << 20)
        assert err.value.reason == "invalid_json"


def test_every_dead_letter_reason_in_the_code_is_declared():
    """The counters of every reason are exported at zero from the start: the list must name them all."""
    root = Path(__file__).resolve().parents[1] / "streamer"
    source = "\n".join(p.read_text() for p in root.rglob("*.py"))
    raised = set(re.findall(r'InvalidRecord\(\s*"([a-z_]+)"', source))
    raised |= set(re.findall(r'reject\(r, "([a-z_]+)"', source))
    raised |= set(re.findall(r'"(duplicate_ts|out_of_order)"', source))
    assert raised and raised <= set(DEAD_LETTER_REASONS), raised - set(DEAD_LETTER_REASONS)
    assert len(raised) >= 15


def test_settings_from_nested_environment(monkeypatch):
    monkeypatch.setenv("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", '["a", "b"]')
    monkeypatch.setenv("STREAMER_ENGINE__CAPACITY", "42")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert s.kafka.input_topics == ["a", "b"]
    assert s.engine.capacity == 42


def test_wrong_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("STREAMER_ENGINE__CAPACITY", "-1")
    with pytest.raises(ConfigError, match="STREAMER_ENGINE__CAPACITY"):
        load_settings()
    monkeypatch.delenv("STREAMER_ENGINE__CAPACITY")
    monkeypatch.setenv("STREAMER_MODEL__FAMILY", "transformer")
    with pytest.raises(ConfigError, match="STREAMER_MODEL__FAMILY"):
        load_settings()


def test_readme_configuration_reference_is_generated_from_settings():
    readme = (__import__("pathlib").Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_markdown() in readme, "README's settings table drifted: paste `streamer settings` output"


def test_security_settings_reach_the_clients_and_secrets_are_masked():
    from streamer.kafka.clients import common_config

    s = load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                             "sasl_username": "svc", "sasl_password": "s3cret", "ssl_cafile": "/etc/ca.pem"})
    cfg = common_config(s.kafka)
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl_plain_username"] == "svc" and cfg["sasl_plain_password"] == "s3cret"
    assert cfg["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in json.dumps(s.masked()) and "s3cret" not in repr(s)
    plain = common_config(load_settings().kafka)
    assert plain["security_protocol"] == "PLAINTEXT" and "sasl_plain_password" not in plain
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__SASL_USERNAME"):
        load_settings(kafka={"security_protocol": "SASL_PLAINTEXT"})


def test_torch_threads_default_to_half_the_cores_and_refuse_zero():
    from streamer.config import resolve_threads

    assert resolve_threads(3) == 3 and resolve_threads(None) >= 1
    with pytest.raises(ConfigError, match="STREAMER_ENGINE__THREADS"):
        load_settings(engine={"threads": 0})


def test_the_daemon_collects_garbage_between_batches_only():
    import gc

    from streamer.heap import BatchCollector

    was_enabled = gc.isenabled()
    collector = BatchCollector(middle_every=3, full_every_s=3600)
    seen: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    try:
        collector.start()
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 1000  # the modules, torch and the model loaded so far
        frozen = gc.get_freeze_count()
        junk = [[i] for i in range(50_000)]  # allocations that would have triggered automatic collections
        collector.settle()
        assert gc.get_freeze_count() >= frozen + 50_000  # what the first batch left alive is frozen too
        del junk
        gc.callbacks.append(record)
        try:
            for _ in range(200_000):  # no automatic collection, whatever is allocated
                _ = [[], []]
            assert seen == []
            for _ in range(6):
                collector.after_poll(busy=True)
            assert seen == [0, 0, 1, 0, 0, 1]
            collector.after_poll(busy=False)  # idle: at most one young collection a second
            assert len(seen) == 6
            collector.last_young -= 1.0
            collector.after_poll(busy=False)
            assert seen[-1] == 0 and len(seen) == 7
            collector.full_every_s = 0.0
            collector.after_poll(busy=True)
            assert seen[-1] == 2
        finally:
            gc.callbacks.remove(record)
        collector.stop()
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        (gc.enable if was_enabled else gc.disable)()
