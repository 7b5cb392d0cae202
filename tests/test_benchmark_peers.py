"""benchmarks.peers on the local broker: the daemon and the hand-written loop timed on one topic (the Quix Streams
and River peers need the peers extra, which `make bench-peers` installs beside the venv)."""

from __future__ import annotations

import json

import pytest

from benchmarks import peers


def test_the_daemon_and_the_handwritten_loop_are_timed_on_the_same_readings(kafka_bootstrap, capsys) -> None:
    assert peers.main(["--bootstrap", kafka_bootstrap, "--peers", "handwritten", "--readings", "3000",
                       "--peer-readings", "1500", "--streams", "30", "--timeout", "120", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("streamer", "streamer_alo", "handwritten"):
        assert out[f"{key}_per_s"] > 0
        cpu = out[f"{key}_cpu_us_per_reading"]
        assert cpu is None or cpu > 0
    assert out["runs"]["handwritten"]["guarantee"] == "at-least-once"
    assert out["runs"]["streamer"]["guarantee"] == "exactly-once"
    assert out["streamer_over_handwritten"] == pytest.approx(out["streamer_per_s"] / out["handwritten_per_s"])


def test_a_peer_whose_package_is_missing_is_named_with_the_make_target(kafka_bootstrap) -> None:
    with pytest.raises(SystemExit, match="make bench-peers"):
        peers.main(["--bootstrap", kafka_bootstrap, "--peers", "quix", "--python", "/bin/false"])
    with pytest.raises(SystemExit, match="unknown"):
        peers.main(["--bootstrap", kafka_bootstrap, "--peers", "flink"])
