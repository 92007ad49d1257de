"""``bench run SUITE... [--out PATH]``: suite names, where results go, sequencing, errors.

The suites themselves are replaced by recorders (their ``run`` function): this checks the
command's plumbing, not a benchmark."""

from __future__ import annotations

import argparse

import pytest

from bench import decode, eplb, moe
from bench import run as bench_run
from bench.__main__ import main


def test_unknown_suite_lists_the_accepted_names(capsys):
    assert main(["run", "ops", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite(s) bogus" in err
    for name in bench_run.SUITES:
        assert name in err


def test_suite_given_twice_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="given twice: moe"):
        bench_run.suite_list(["moe", "eplb", "moe"])


def test_run_needs_a_suite(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2
    assert "SUITE" in capsys.readouterr().err


def test_out_is_the_file_for_one_suite_and_a_directory_for_several(tmp_path):
    assert bench_run.out_paths(["ops"], str(tmp_path / "r.json")) == {"ops": tmp_path / "r.json"}
    assert bench_run.out_paths(["ops", "moe"], str(tmp_path / "d")) == {
        "ops": tmp_path / "d" / "ops.json", "moe": tmp_path / "d" / "moe.json"}
    assert bench_run.out_paths(["ops", "moe"], None) == {"ops": None, "moe": None}


def test_out_of_the_wrong_kind_is_refused(tmp_path, capsys):
    f = tmp_path / "file.json"
    f.write_text("{}")
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        bench_run.out_paths(["ops"], str(tmp_path))
    assert main(["run", "ops", "moe", "--out", str(f)]) == 2
    assert "is a file; with several suites --out is a directory" in capsys.readouterr().err


@pytest.fixture
def recorded(monkeypatch):
    """Replace three suites' ``run`` by recorders: (suite, out) per call; exit codes set."""
    calls: list[tuple[str, str | None]] = []
    codes = {"decode": 0, "moe": 3, "eplb": 0}

    def recorder(name):
        def run(args):
            calls.append((name, args.out))
            return codes[name]
        return run

    for mod, name in ((decode, "decode"), (moe, "moe"), (eplb, "eplb")):
        monkeypatch.setattr(mod, "run", recorder(name))
    return calls, codes


def test_several_suites_run_in_order_with_progress_lines(recorded, tmp_path, capsys):
    calls, _ = recorded
    out = tmp_path / "results"
    assert main(["run", "eplb", "decode", "moe", "--out", str(out)]) == 3  # moe's status
    assert calls == [("eplb", str(out / "eplb.json")), ("decode", str(out / "decode.json")),
                     ("moe", str(out / "moe.json"))]
    assert out.is_dir()
    err = capsys.readouterr().err
    assert "[bench] run 1/3: eplb" in err and "[bench] run 3/3: moe" in err
    assert "[bench] moe: exit 3" in err


def test_one_suite_gets_the_file_and_defaults(recorded, tmp_path):
    calls, codes = recorded
    assert main(["run", "decode", "--out", str(tmp_path / "d.json")]) == 0
    assert main(["run", "eplb"]) == 0
    assert calls == [("decode", str(tmp_path / "d.json")), ("eplb", None)]


def test_a_suite_raising_systemexit_does_not_stop_the_others(monkeypatch, recorded, capsys):
    calls, _ = recorded

    def refuses(args):
        raise SystemExit("model checkpoint not found")

    monkeypatch.setattr(decode, "run", refuses)
    assert main(["run", "decode", "eplb"]) == 1
    assert calls == [("eplb", None)]
    assert "decode: model checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("profile", sorted(bench_run.PROFILES))
def test_every_profile_parses_for_its_suites(profile, tmp_path):
    from bench.__main__ import build_parser

    assert set(bench_run.PROFILES[profile]) <= set(bench_run.SUITES)
    for suite in bench_run.SUITES:
        args = build_parser().parse_args(bench_run.suite_argv(suite, tmp_path / "x", profile))
        assert args.out == str(tmp_path / "x")


def test_nightly_profile_reaches_the_suite(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr(moe, "run", lambda args: seen.update(worlds=args.worlds))
    assert main(["run", "--profile", "nightly", "moe", "--out", str(tmp_path / "m.json")]) == 0
    assert seen["worlds"] == [1, 2]
    assert "[bench] run 1/1: moe --worlds 1,2 " in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: invalid choice, with the accepted ones
        main(["run", "--profile", "bogus", "moe"])
    assert "--profile: invalid choice: 'bogus'" in capsys.readouterr().err
