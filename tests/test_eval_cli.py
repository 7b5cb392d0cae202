"""`streamer eval ...` at the console script's entry point: a missing input is one line on stderr naming the option
and the path, exit status 2, before any training; help texts render as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
OCCUPANCY_TEST = DATA / "occupancy" / "datatest.txt"


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status of `streamer ARGV` and its stderr lines (nothing may reach stdout)."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert out == ""
    return rc, err.splitlines()


@pytest.mark.parametrize(("argv", "missing", "what"), [
    (["eval", "nab", "--data", "{tmp}/nab", "--out", "{tmp}/out"], "--data {tmp}/nab", "no such folder"),
    (["eval", "smap", "--data", "{tmp}/smap"], "--data {tmp}/smap", "no such folder"),
    (["eval", "ett", "--data", "{tmp}/ETTh9.csv"], "--data {tmp}/ETTh9.csv", "no such file"),
    (["eval", "ett", "--data", str(DATA / "ett" / "ETTh1.csv"), "--checkpoint", "{tmp}/ckpt"],
     "--checkpoint {tmp}/ckpt", "no such folder"),
    (["eval", "occupancy", "--test", "{tmp}/datatest.txt", "--train", str(OCCUPANCY_TEST)],
     "--test {tmp}/datatest.txt", "no such file"),
    (["eval", "occupancy", "--test", str(OCCUPANCY_TEST), "--train", "{tmp}/datatraining.txt"],
     "--train {tmp}/datatraining.txt", "no such file"),
    (["eval", "occupancy", "--test", str(OCCUPANCY_TEST), "--checkpoint", "{tmp}/ckpt"],
     "--checkpoint {tmp}/ckpt", "no such folder"),
])
def test_eval_with_a_missing_input_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], missing: str, what: str) -> None:
    rc, err = run_main([a.format(tmp=tmp_path) for a in argv] + ["--quiet"], capsys)
    assert rc == 2 and err == [f"streamer: {missing.format(tmp=tmp_path)}: {what}"]


def test_eval_nab_and_smap_on_a_folder_without_their_data_print_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_main(["eval", "nab", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert rc == 2 and err == [f"streamer: no NAB data files <category>/*.csv under {tmp_path}"]
    rc, err = run_main(["eval", "smap", "--data", str(tmp_path), "--quiet"], capsys)
    assert rc == 2 and err == [f"streamer: no labeled_anomalies.csv in {tmp_path} or its parent"]


def test_eval_ett_on_a_file_that_is_not_a_table_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ETTh1.csv"
    folder.mkdir()
    rc, err = run_main(["eval", "ett", "--data", str(folder), "--quiet"], capsys)
    assert rc == 2 and err == [f"streamer: --data {folder}: a folder, expected a file"]


def test_eval_occupancy_help_shows_a_single_percent_sign(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["eval", "occupancy", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "15%" in out and "%%" not in out


@pytest.mark.parametrize("argv", [[], ["eval"], ["eval", "nab"], ["eval", "smap"], ["eval", "ett"], ["replay"],
                                  ["train"], ["inspect"]])
def test_help_texts_have_no_doubled_percent_sign(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0 and "%%" not in capsys.readouterr().out
