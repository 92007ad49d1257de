"""``bench ab``: argument checks, ref resolution, worktree builds (a throw-away git repository
whose setup.py only writes the libraries), run order, pooling, exit codes. No benchmark
runs: the suite runs are replaced by a writer of result files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ab, pool, worktrees
from bench.__main__ import main
from bench.compare import InvalidInput
from bench.run import SUITES
from bench.worktrees import AbError, Checkout

FAKE_SETUP = """\
import sys
from pathlib import Path
assert sys.argv[1:] == ["build_ext", "--inplace"], sys.argv
if Path("FAIL").exists():
    sys.exit("compiler error")
for lib in ("_C.cpython-fake.so", "_eplb.cpython-fake.so"):
    (Path("src/vllm_ascend") / lib).write_text("built")
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository with two commits (``first``, then ``second`` on branch ``main``)."""
    r = tmp_path / "repo"
    (r / "src" / "vllm_ascend").mkdir(parents=True)
    git(r.parent, "init", "-q", "-b", "main", str(r))
    git(r, "config", "user.email", "t@example.com")
    git(r, "config", "user.name", "t")
    (r / "setup.py").write_text(FAKE_SETUP)
    (r / "src" / "vllm_ascend" / "__init__.py").write_text("")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "first")
    (r / "README").write_text("two\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "second")
    return r


# ---------------------------------------------------------------- arguments


def test_head_ref_defaults_to_head():
    assert ab.split_refs(["main", "ops"]) == ("main", "HEAD", "ops")
    assert ab.split_refs(["v1", "v2", "decode"]) == ("v1", "v2", "decode")


@pytest.mark.parametrize("items", [["ops"], ["a", "b", "c", "ops"], []])
def test_wrong_number_of_positionals(items):
    with pytest.raises(AbError, match="expected BASE_REF \\[HEAD_REF\\] SUITE"):
        ab.split_refs(items)


def test_unknown_suite_lists_the_accepted_ones():
    with pytest.raises(AbError, match="unknown suite 'bogus'") as e:
        ab.split_refs(["main", "HEAD", "bogus"])
    assert all(s in str(e.value) for s in SUITES)


@pytest.mark.parametrize("item", ["NOEQUALS", "=1", "1X=2", "A B=1"])
def test_bad_env_items_name_the_option(item):
    with pytest.raises(AbError, match=f"--head-env '{item}' is not VAR=VALUE"):
        ab.parse_env([item], "--head-env")


def test_env_items():
    assert ab.parse_env(["A=1", "B_2=x=y", "C="], "--base-env") == {
        "A": "1", "B_2": "x=y", "C": ""}


@pytest.mark.parametrize("rounds", [1, 2, 5])
def test_interleaved_order(rounds):
    order = ab.schedule(rounds)
    assert order == [(s, r) for r in range(1, rounds + 1) for s in ("base", "head")]
    assert [s for s, _ in order[:4]] == ["base", "head", "base", "head"][:2 * rounds]


def test_rounds_must_be_positive():
    with pytest.raises(AbError, match="--rounds must be >= 1, got 0"):
        ab.schedule(0)


# ---------------------------------------------------------------- refs and worktrees


def test_refs_resolve_to_full_commits(repo):
    head, first = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    assert worktrees.resolve(repo, "HEAD", "HEAD_REF") == head
    assert worktrees.resolve(repo, "main", "HEAD_REF") == head
    assert worktrees.resolve(repo, "HEAD~1", "BASE_REF") == first
    assert worktrees.resolve(repo, first[:8], "BASE_REF") == first


@pytest.mark.parametrize("ref", ["no-such-branch", "HEAD~9", "--all", "", "HEAD:README"])
def test_bad_refs_name_the_argument(repo, ref):
    with pytest.raises(AbError, match=f"BASE_REF {ref!r} is not"):
        worktrees.resolve(repo, ref, "BASE_REF")


def test_build_makes_the_worktree_once(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(worktrees.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("VLLM_ASCEND_SKIP_CSRC", raising=False)
    commit = git(repo, "rev-parse", "HEAD~1")
    said = []
    c = worktrees.build(repo, "HEAD~1", commit, tmp_path / "wd", log=said.append)
    assert c == Checkout("HEAD~1", commit, tmp_path / "wd" / commit)
    libs = sorted(p.name for p in (c.path / "src" / "vllm_ascend").glob("*.so"))
    assert libs == ["_C.cpython-fake.so", "_eplb.cpython-fake.so"]
    assert not (c.path / "README").exists()  # the first commit's tree, not the second's
    again = worktrees.build(repo, "x", commit, tmp_path / "wd", log=said.append)
    assert again.path == c.path and "reusing the built worktree" in said[-1]


def test_unfinished_worktree_is_made_again(repo, tmp_path):
    commit = git(repo, "rev-parse", "HEAD")
    path = tmp_path / "wd" / commit
    path.mkdir(parents=True)
    (path / "junk").write_text("left by an interrupted build")
    said = []
    c = worktrees.build(repo, "HEAD", commit, tmp_path / "wd", log=said.append)
    assert not (c.path / "junk").exists() and worktrees.is_built(c.path, commit)
    assert any("removing an unfinished worktree" in s for s in said)


def test_failed_build_names_its_log(repo, tmp_path):
    (repo / "FAIL").write_text("")
    git(repo, "add", "FAIL")
    git(repo, "commit", "-qm", "broken")
    commit = git(repo, "rev-parse", "HEAD")
    with pytest.raises(AbError, match="building HEAD .* failed \\(exit 1\\); log: .*build.log"):
        worktrees.build(repo, "HEAD", commit, tmp_path / "wd", log=lambda m: None)
    assert not worktrees.is_built(tmp_path / "wd" / commit, commit)


def test_missing_library_after_build_is_an_error(repo, tmp_path, monkeypatch):
    (repo / "setup.py").write_text("")  # builds nothing
    git(repo, "commit", "-qam", "no build")
    commit = git(repo, "rev-parse", "HEAD")
    monkeypatch.delenv("VLLM_ASCEND_SKIP_CSRC", raising=False)
    with pytest.raises(AbError, match="left no .*_eplb"):
        worktrees.build(repo, "HEAD", commit, tmp_path / "wd", log=lambda m: None)
    monkeypatch.setenv("VLLM_ASCEND_SKIP_CSRC", "1")
    assert worktrees.build(repo, "HEAD", commit, tmp_path / "wd", log=lambda m: None)


def test_side_env_puts_the_checkout_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = worktrees.side_env(tmp_path, {"X": "1"})
    assert env["PYTHONPATH"].split(":") == [str(tmp_path / "src"), str(tmp_path), "/elsewhere"]
    assert env["X"] == "1" and env["VLLM_DISABLE_COMPILE_CACHE"] == "1"


# ---------------------------------------------------------------- the whole command, faked runs


def result_doc(samples: list[float], commit: str) -> dict:
    return {"benchmark": "decode", "primary_metric": "tokens_per_second",
            "higher_is_better": True, "ratios": {"batch_1": 1.0},
            "fingerprint": {"cpu_model": "cpu", "cpu_flags": [], "cores": 2,
                            "git_commit": commit, "config": {"repeats": len(samples)}},
            "results": [{"backend": "plugin", "batch_size": 1,
                         "tokens_per_second": sorted(samples)[len(samples) // 2],
                         "samples": samples}]}


@pytest.fixture
def faked(repo, tmp_path, monkeypatch):
    """bench ab on ``repo`` with builds recorded and runs writing result files: a run's
    samples are 100 tok/s times the side's factor (``factors``), with a small wobble."""
    monkeypatch.setattr(ab, "REPO_ROOT", repo)
    built, runs = [], []
    factors = {"base": 1.0, "head": 1.0}

    def build(repo_, ref, commit, workdir, log):
        built.append(commit)
        return Checkout(ref, commit, workdir / commit)

    def run_suite(checkout, suite, out, suite_args, env_extra, label, verbose):
        side = out.name.split("-")[0]
        runs.append((out.name, checkout.commit, suite, tuple(suite_args), dict(env_extra)))
        if env_extra.get("FAIL"):
            raise ab.RunFailed(f"{label}: failed; log: x")
        f = factors[side] * (1.0 if env_extra.get("SLOW") is None else 1 - float(env_extra["SLOW"]))
        wobble = [1.0, 1.01, 0.99, 1.005]
        out.write_text(json.dumps(result_doc([100 * f * w for w in wobble], checkout.commit)))

    monkeypatch.setattr(worktrees, "build", build)
    monkeypatch.setattr(ab, "run_suite", run_suite)
    return {"repo": repo, "built": built, "runs": runs, "out": tmp_path / "out",
            "wd": str(tmp_path / "wd")}


def test_runs_interleave_and_compare_clean(faked, capsys):
    code = main(["ab", "HEAD~1", "main", "decode", "--rounds", "3", "--out", str(faked["out"]),
                 "--workdir", faked["wd"], "--suite-args=--which plugin --repeats 4"])
    assert code == 0
    first, second = git(faked["repo"], "rev-parse", "HEAD~1"), git(faked["repo"], "rev-parse", "HEAD")
    assert faked["built"] == [first, second]
    assert [r[0] for r in faked["runs"]] == [
        "base-1.json", "head-1.json", "base-2.json", "head-2.json", "base-3.json", "head-3.json"]
    assert [r[1] for r in faked["runs"]] == [first, second] * 3
    assert faked["runs"][0][3] == ("--which", "plugin", "--repeats", "4")
    base = json.loads((faked["out"] / "base.json").read_text())
    assert len(base["results"][0]["samples"]) == 12  # 3 runs x 4 samples pooled
    assert base["ab"]["commit"] == first and base["pooled_from"][0] == "base-1.json"
    cmp = json.loads((faked["out"] / "compare.json").read_text())
    assert [r["verdict"] for r in cmp["rows"]] == ["noise"] and cmp["exit_status"] == 0
    assert cmp["ab"]["head"]["commit"] == second
    md = (faked["out"] / "compare.md").read_text()
    assert "base-1, head-1, base-2, head-2" in md and "| noise |" in md
    assert md.strip() in capsys.readouterr().out.strip()


def test_slower_head_is_a_regression(faked, capsys):
    code = main(["ab", "HEAD", "HEAD", "decode", "--out", str(faked["out"]),
                 "--workdir", faked["wd"], "--head-env", "SLOW=0.2"])
    assert code == 1
    assert len(faked["built"]) == 1  # A/A: one build for both sides
    assert [r[4] for r in faked["runs"]] == [{}, {"SLOW": "0.2"}] * 2
    out = capsys.readouterr()
    assert "**regression**" in out.out and "head env: SLOW=0.2" in out.out
    assert "same commit" in out.err


def test_bad_ref_fails_before_any_build(faked, capsys):
    assert main(["ab", "main", "nope", "ops", "--workdir", faked["wd"]]) == 2
    assert "HEAD_REF 'nope' is not a commit" in capsys.readouterr().err
    assert faked["built"] == [] and faked["runs"] == []


def test_bad_suite_and_options_exit_2(faked, capsys):
    assert main(["ab", "main", "bogus"]) == 2
    assert main(["ab", "main", "ops", "--suite-args=--out x.json"]) == 2
    assert main(["ab", "main", "ops", "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'bogus'" in err and "must not contain --out" in err
    assert "--rounds must be >= 1" in err and faked["built"] == []


def test_failed_run_exits_3(faked, capsys):
    code = main(["ab", "HEAD~1", "decode", "--out", str(faked["out"]), "--workdir",
                 faked["wd"], "--base-env", "FAIL=1"])
    assert code == 3 and "base-1" not in [r[0] for r in faked["runs"][1:]]
    assert "failed; log: x" in capsys.readouterr().err


def test_suite_command_is_the_checkouts_own_bench(tmp_path):
    cmd = ab.suite_command("ops", tmp_path / "r.json", ["--runs", "4"])
    assert cmd == [sys.executable, "-m", "bench", "ops", "--out", str(tmp_path / "r.json"),
                   "--runs", "4"]


# ---------------------------------------------------------------- pooling


def test_pool_concatenates_samples_and_recomputes_their_median():
    a, b = result_doc([1.0, 2.0, 3.0], "x"), result_doc([10.0, 20.0, 30.0], "x")
    a["results"][0]["latency_ms_samples"] = [5.0]
    a["results"][0]["latency_ms"] = 5.0
    b["results"][0]["latency_ms_samples"] = [7.0, 9.0]
    b["results"][0]["latency_ms"] = 8.0
    a["ratios"], b["ratios"] = {"batch_1": 1.0}, {"batch_1": 3.0}
    out = pool.pool([a, b], ["a.json", "b.json"])
    row = out["results"][0]
    assert row["samples"] == [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]
    assert row["tokens_per_second"] == pytest.approx(6.5)
    assert row["latency_ms_samples"] == [5.0, 7.0, 9.0] and row["latency_ms"] == 7.0
    assert out["ratios"] == {"batch_1": 2.0} and out["pooled_from"] == ["a.json", "b.json"]


def test_pool_refuses_runs_of_different_configurations():
    a, b = result_doc([1.0], "x"), result_doc([1.0], "x")
    b["results"][0]["batch_size"] = 8
    with pytest.raises(InvalidInput, match="b.json does not hold the same configurations"):
        pool.pool([a, b], ["a.json", "b.json"])
    b = result_doc([1.0], "x")
    b["benchmark"] = "ops"
    with pytest.raises(InvalidInput, match="different benchmarks"):
        pool.pool([a, b], ["a.json", "b.json"])
