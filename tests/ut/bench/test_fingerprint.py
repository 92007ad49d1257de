"""``bench/fingerprint.py``: the fields every suite's result carries, and the suites' defaults
(enough samples for ``bench compare``)."""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from pathlib import Path

import pytest

from bench import REPO_ROOT, compare
from bench.__main__ import build_parser
from bench.fingerprint import KERNEL_FLAGS, config_from_args, cpu_flags, fingerprint

FIELDS = {"cpu_model", "cpu_flags", "cores", "torch_version", "vllm_version", "plugin_version",
          "git_commit", "git_dirty", "config"}


def test_fingerprint_fields():
    fp = fingerprint({"rounds": 10})
    assert set(fp) == FIELDS
    assert fp["config"] == {"rounds": 10}
    assert isinstance(fp["cpu_model"], str) and fp["cpu_model"]
    assert fp["cpu_flags"] == sorted(fp["cpu_flags"]) and set(fp["cpu_flags"]) <= KERNEL_FLAGS
    assert fp["cores"] == len(os.sched_getaffinity(0))
    assert fp["torch_version"] and fp["plugin_version"]
    assert fp["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", fp["git_commit"])
    assert fp["git_dirty"] in (None, True, False)


def test_cpu_flags_keeps_kernel_isa_flags_sorted():
    text = ("processor\t: 0\nmodel name\t: Test CPU\n"
            "flags\t\t: fpu sse2 sse4_2 avx2 avx512f avx512_vnni amx_tile amx_int8 avx fma ht\n"
            "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(text) == ["amx_int8", "amx_tile", "avx", "avx2", "avx512_vnni", "avx512f",
                               "fma", "sse4_2"]


def test_cpu_flags_aarch64_features_and_none():
    assert cpu_flags("processor : 0\nFeatures : fp asimd sve2 i8mm crc32\n") == [
        "asimd", "i8mm", "sve2"]
    assert cpu_flags("processor : 0\n") == []


def test_config_drops_output_options_and_stringifies_paths():
    ns = argparse.Namespace(out="x.json", verbose=True, run=print, min_ratio=0.9,
                            model=Path("/m"), batch_sizes=[1, 8], repeats=4)
    assert config_from_args(ns) == {"batch_sizes": [1, 8], "model": "/m", "repeats": 4}
    assert config_from_args(ns, exclude=("model",)) == {"batch_sizes": [1, 8], "repeats": 4}


@pytest.mark.parametrize("argv, field", [
    (["decode"], "repeats"), (["quant-decode"], "repeats"), (["moe"], "repeats"),
    (["ops"], "rounds")])
def test_default_samples_per_configuration_are_enough_for_compare(argv, field):
    args = build_parser().parse_args(argv)
    assert getattr(args, field) >= compare.MIN_SAMPLES
    assert "out" not in config_from_args(args)


def test_compare_refuses_fingerprints_of_another_config_or_machine():
    a = fingerprint({"rounds": 10})
    b = dict(a, config={"rounds": 20}, git_commit="f" * 40)
    refused, info = compare.fingerprint_diff({"fingerprint": a}, {"fingerprint": b})
    assert refused == ["config.rounds"] and info and info[0].startswith("git_commit")
    refused, _ = compare.fingerprint_diff({"fingerprint": a},
                                          {"fingerprint": dict(a, cpu_flags=["not_a_flag"])})
    assert refused == ["cpu_flags"]


def test_pyproject_installs_the_bench_command_and_package_data():
    doc = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert doc["project"]["scripts"]["bench"] == "bench.__main__:main"
    setuptools = doc["tool"]["setuptools"]
    assert setuptools["package-dir"]["bench"] == "bench"
    assert "bench.*" in setuptools["packages"]["find"]["include"]
    assert "thresholds.toml" in setuptools["package-data"]["bench"]
    assert any(d.startswith("pytest-benchmark")
               for d in doc["project"]["optional-dependencies"]["bench"])
