"""Settings that are wrong say so: unknown variables and .env keys, comma lists, `streamer settings` as a
pre-flight check, `streamer --version`, and JSON logs where every line (tracebacks included) is JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.config import derive_instance_id, load_settings
from streamer.errors import ConfigError
from streamer.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_settings(monkeypatch, tmp_path):
    """No STREAMER_* setting from the outside and no .env: the working directory is an empty folder."""
    for name in list(os.environ):
        if name.upper().startswith("STREAMER_") and not name.upper().startswith("STREAMER_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _child_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMER_") and k != "POD_NAME"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **settings}


def test_unknown_variable_fails_naming_it_and_the_closest_setting(no_settings, monkeypatch):
    monkeypatch.setenv("STREAMER_KAFKA__BOOTSTRAP_SERVER", "10.0.0.1:9092")
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__BOOTSTRAP_SERVER .*did you mean "
                                          "STREAMER_KAFKA__BOOTSTRAP_SERVERS"):
        load_settings()
    monkeypatch.delenv("STREAMER_KAFKA__BOOTSTRAP_SERVER")
    monkeypatch.setenv("STREAMER_LOG_FORMT", "json")
    with pytest.raises(ConfigError, match="STREAMER_LOG_FORMT .*did you mean STREAMER_LOG_FORMAT"):
        load_settings()
    monkeypatch.delenv("STREAMER_LOG_FORMT")
    monkeypatch.setenv("STREAMER_KAFKA__NOTHING_LIKE_IT", "1")
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__NOTHING_LIKE_IT .*no such setting"):
        load_settings()
    monkeypatch.delenv("STREAMER_KAFKA__NOTHING_LIKE_IT")
    monkeypatch.setenv("STREAMER_TEST_ANYTHING", "x")  # the test harness's own variables are not settings
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    assert load_settings().kafka.bootstrap_servers == "127.0.0.1:19092"


def test_unknown_dotenv_key_fails_naming_it_and_the_closest_setting(no_settings):
    env_file = no_settings / ".env"
    env_file.write_text("COMPOSE_PROJECT_NAME=other-tool\nSTREAMER_ENGINE__CAPACITY=42\n")
    assert load_settings().engine.capacity == 42  # the .env file is read; other tools' keys are theirs
    env_file.write_text("STREAMER_ENGINE__CAPACITY=42\nSTREAMER_ENGINE__CAPACTY=43\n")
    with pytest.raises(ConfigError, match=r"STREAMER_ENGINE__CAPACTY \(in the \.env\).*did you mean "
                                          "STREAMER_ENGINE__CAPACITY"):
        load_settings()


def test_a_typo_inside_a_group_given_as_json_or_in_code_is_refused(no_settings, monkeypatch):
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__BOOTSTRAP_SERVER: Extra inputs"):
        load_settings(kafka={"bootstrap_server": "x:1"})
    monkeypatch.setenv("STREAMER_KAFKA", '{"bootstrap_servers": ')
    with pytest.raises(ConfigError, match="STREAMER_KAFKA: not valid JSON"):
        load_settings()


def test_list_settings_accept_comma_separated_text_as_well_as_json(no_settings, monkeypatch):
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", "readings")
    assert load_settings().kafka.input_topics == ["readings"]
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", "readings, more-readings")
    assert load_settings().kafka.input_topics == ["readings", "more-readings"]
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", '["a", "b"]')
    assert load_settings().kafka.input_topics == ["a", "b"]
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", " , ")
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__INPUT_TOPICS"):
        load_settings()
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", '["a", ')
    with pytest.raises(ConfigError, match="STREAMER_KAFKA__INPUT_TOPICS"):
        load_settings()


def test_settings_command_prints_the_effective_settings_with_secrets_masked(no_settings, monkeypatch, capsys):
    monkeypatch.setenv("STREAMER_KAFKA__INPUT_TOPICS", "a,b")
    monkeypatch.setenv("STREAMER_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMER_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMER_KAFKA__SASL_PASSWORD", "s3cret-sasl")
    monkeypatch.setenv("STREAMER_KAFKA__SSL_PASSWORD", "s3cret-key")
    monkeypatch.setenv("STREAMER_ENGINE__CAPACITY", "77")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert lines["STREAMER_KAFKA__INPUT_TOPICS"] == '["a", "b"]'
    assert lines["STREAMER_ENGINE__CAPACITY"] == "77"
    assert lines["STREAMER_KAFKA__SASL_USERNAME"] == "svc"
    assert lines["STREAMER_KAFKA__SASL_PASSWORD"] == lines["STREAMER_KAFKA__SSL_PASSWORD"] == "**********"
    assert lines["STREAMER_KAFKA__INSTANCE_ID"] == "null"
    assert "s3cret" not in out
    assert main(["settings", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kafka"]["sasl_password"] == "**********" and data["engine"]["capacity"] == 77


def test_settings_command_exits_non_zero_naming_the_wrong_setting(no_settings, monkeypatch, capsys):
    monkeypatch.setenv("STREAMER_ENGINE__CAPACITY", "-1")
    assert main(["settings"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "STREAMER_ENGINE__CAPACITY" in captured.err
    monkeypatch.delenv("STREAMER_ENGINE__CAPACITY")
    monkeypatch.setenv("STREAMER_KAFKA__CONSUMER_OPTIONS", '{"fetch_max_byte": 1000000}')
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert "STREAMER_KAFKA__CONSUMER_OPTIONS" in err and "'fetch_max_byte'" in err and "'fetch_max_bytes'" in err


def test_settings_command_as_a_child_process_pre_flight(tmp_path):
    run = [sys.executable, "-m", "streamer.cli", "settings"]
    ok = subprocess.run(run, env=_child_env(STREAMER_KAFKA__INPUT_TOPICS="x"), cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "STREAMER_KAFKA__INPUT_TOPICS=[\"x\"]" in ok.stdout.splitlines()
    bad = subprocess.run(run, env=_child_env(STREAMER_KAFKA__BOOTSTRAP_SERVER="x:1"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "STREAMER_KAFKA__BOOTSTRAP_SERVER " in bad.stderr and "STREAMER_KAFKA__BOOTSTRAP_SERVERS" in bad.stderr


def test_settings_reference_is_the_markdown_table(no_settings, capsys):
    from streamer.config import settings_markdown

    assert main(["settings", "--reference"]) == 0
    assert capsys.readouterr().out == settings_markdown() + "\n"


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamer {metadata.version('streamer')}"


def test_pod_name_gives_the_static_membership_id_unless_one_is_set(no_settings, monkeypatch, capsys):
    assert derive_instance_id(load_settings()).kafka.instance_id is None  # no pod name: dynamic membership
    monkeypatch.setenv("POD_NAME", "streamer-2")
    assert derive_instance_id(load_settings()).kafka.instance_id == "streamer-2"
    assert load_settings().kafka.instance_id is None  # only the serving process derives it, not every reader
    assert derive_instance_id(load_settings(kafka={"instance_id": "given"})).kafka.instance_id == "given"
    assert main(["settings"]) == 0
    assert "STREAMER_KAFKA__INSTANCE_ID=streamer-2" in capsys.readouterr().out.splitlines()


def test_json_formatter_keeps_a_traceback_on_one_line():
    try:
        raise ValueError("boom\nwith a second line")
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                                   sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "failed x" and parsed["level"] == "error"
    assert parsed["exc"].startswith("Traceback") and "boom\nwith a second line" in parsed["exc"]


def test_json_logs_make_every_line_json_uncaught_tracebacks_and_setting_errors_included(tmp_path):
    # A command that fails with an exception nobody catches, run as the console script runs main().
    script = ("import sys, streamer.cli as cli\n"
              "def broken(args):\n    raise RuntimeError('a bug\\nover two lines')\n"
              "cli.cmd_settings = broken\n"
              "sys.exit(cli.main(['settings']))\n")
    uncaught = subprocess.run([sys.executable, "-c", script], env=_child_env(STREAMER_LOG_FORMAT="json"),
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert uncaught.returncode == 1
    lines = [json.loads(line) for line in uncaught.stderr.splitlines()]  # fails on any line that is not JSON
    assert len(lines) == 1 and lines[0]["level"] == "critical"
    assert lines[0]["exc"].startswith("Traceback") and "RuntimeError: a bug\nover two lines" in lines[0]["exc"]
    text = subprocess.run([sys.executable, "-c", script], env=_child_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert text.returncode == 1 and text.stderr.startswith("Traceback")  # text logs: Python's own traceback
    wrong = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "settings"],
        env=_child_env(STREAMER_LOG_FORMAT="json", STREAMER_ENGINE__CAPACITY="-1"), cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2
    (line,) = [json.loads(line) for line in wrong.stderr.splitlines()]
    assert line["level"] == "error" and "STREAMER_ENGINE__CAPACITY" in line["msg"]
