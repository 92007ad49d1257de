"""SmolLM2 quantized by ``vllm_ascend.tools.quantize``, served by vLLM with the plugin,
against the fp32 plugin run (greedy, 5 prompts x 32 tokens, ``tests.e2e.scored_generate``:
``tests.e2e.generate``'s prompts and sampling, plus teacher-forced scoring).

Per scheme the test reports (prints, and writes to ``<session tmp>/quantized-smollm2*/
agreement.json``):

- ``teacher_forced_agreement``: over the fp32 run's 160 greedy tokens, the fraction where
  the quantized model, given the fp32 prefix, picks the same greedy token (per-step
  agreement, no cascade);
- ``greedy_prefix_agreement``: free-running, the fraction of the 160 tokens generated before
  each prompt's first divergence from fp32 (after a divergence the contexts differ; with a
  135M model a near-tie flip of a few hundredths of a nat ends a prompt's count early);
- ``greedy_position_match``: free-running, positions holding the same token;
- ``max_logprob_diff``: max over the 160 positions of |logprob of the fp32 token| between
  the quantized (teacher-forced) and the fp32 run; ``max_logprob_diff_prefix``: the same over
  the free-running agreeing prefix.

Quantized checkpoints are written once per session (the CLI, in a subprocess) into the
session tmp dir. Only W8A8_DYNAMIC runs by default (asserted: teacher-forced agreement
>= 80%, as is W8A8_DYNAMIC with a quantized lm_head); the other cases are ``slow``
(``-m ""`` or ``make test-all``) and assert that the
checkpoint loads under the expected quantization method and generates 32 finite-logprob
tokens per prompt.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time

import pytest

from tests.e2e.conftest import PYTHON, REPO, vllm_env

pytestmark = pytest.mark.e2e

MIN_W8A8_DYNAMIC_AGREEMENT = 0.8
#: A compiled run's teacher-forced agreement with fp32 may fall this far below eager's.
MAX_COMPILED_AGREEMENT_LOSS = 0.05
#: id -> (scheme, extra quantize CLI args, vLLM quantization method expected in the log)
CASES = {
    "W8A8_DYNAMIC": ("W8A8_DYNAMIC", [], "ascend"),  # SmoothQuant alpha 0.5 by default
    "W8A8_DYNAMIC-nosmooth": ("W8A8_DYNAMIC", ["--smooth-alpha", "0"], "ascend"),
    # + the tied lm_head untied and quantized to int8 (what `bench quant-decode` measures)
    "W8A8_DYNAMIC-lm_head": ("W8A8_DYNAMIC", ["--lm-head", "W8A8_DYNAMIC"], "ascend"),
    "W8A8": ("W8A8", [], "ascend"),  # SmoothQuant alpha 0.5 by default
    "W8A8-minmax": ("W8A8", ["--smooth-alpha", "0"], "ascend"),
    "W8A16": ("W8A16", [], "ascend"),
    "W4A16": ("W4A16", ["--group-size", "64"], "ascend"),
    "W4A8_DYNAMIC": ("W4A8_DYNAMIC", [], "ascend"),
    "W4A8_DYNAMIC-legacy": ("W4A8_DYNAMIC", ["--w4a8-format", "legacy"], "ascend"),
    "W4A4_FLATQUANT_DYNAMIC": ("W4A4_FLATQUANT_DYNAMIC", [], "ascend"),
    "ct-W8A8_DYNAMIC": ("W8A8_DYNAMIC", ["--format", "compressed-tensors"],
                        "ascend-compressed-tensors"),
    "ct-W8A8": ("W8A8", ["--format", "compressed-tensors"], "ascend-compressed-tensors"),
    "ct-W4A16": ("W4A16", ["--format", "compressed-tensors", "--group-size", "64"],
                 "ascend-compressed-tensors"),
    "ct-W4A8_DYNAMIC": ("W4A8_DYNAMIC", ["--format", "compressed-tensors", "--group-size", "64"],
                        "ascend-compressed-tensors"),
}
FAST = {"W8A8_DYNAMIC"}
#: Cases held to MIN_W8A8_DYNAMIC_AGREEMENT (the others: load, generate, report).
GATED = {"W8A8_DYNAMIC", "W8A8_DYNAMIC-lm_head"}


class Session:
    """Checkpoints, runs and the report, shared by the session's tests."""

    def __init__(self, root, model):
        self.root, self.model = root, model
        self.runs: dict[str, dict] = {}
        self.report: dict[str, dict] = {}

    def checkpoint(self, case: str):
        scheme, extra, _ = CASES[case]
        out = self.root / f"ckpt-{case}"
        if not (out / "config.json").is_file():
            cmd = [PYTHON, "-m", "vllm_ascend.tools.quantize", "--model", str(self.model),
                   "--scheme", scheme, "--out", str(out), "--no-progress", *extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(), capture_output=True, text=True,
                                  timeout=1200)
            assert proc.returncode == 0, f"quantize {case} failed:\n{proc.stderr[-4000:]}"
            assert proc.stdout.strip() == str(out)
            print(f"[{case}] quantized in {time.perf_counter() - t0:.0f} s: "
                  f"{proc.stderr.strip().splitlines()[0]}")
        return out

    def generate(self, name: str, model, reference=None) -> tuple[dict | None, str]:
        """(report or None on failure, stdout + stderr) of tests.e2e.scored_generate (eager, 32
        tokens; teacher-forced on ``reference``'s report file when given)."""
        if name in self.runs:
            return self.runs[name]["report"], self.runs[name]["stderr"]
        out = self.root / f"{name}.json"
        env = vllm_env(VLLM_CACHE_ROOT=str(self.root / f"vllm-cache-{name}"))
        cmd = [PYTHON, "-m", "tests.e2e.scored_generate", "--model", str(model), "--out",
               str(out), "--max-tokens", "32"]
        if reference is not None:
            cmd += ["--reference", str(reference)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=1200)
        report = json.loads(out.read_text()) if proc.returncode == 0 else None
        log = proc.stdout + proc.stderr  # vLLM logs (worker tracebacks too) go to stdout
        if proc.returncode != 0:
            log += f"\n[exit status {proc.returncode}]"
        self.runs[name] = {"report": report, "stderr": log}
        return report, log

    def record(self, case: str, entry: dict) -> None:
        self.report[case] = entry
        path = self.root / "agreement.json"
        path.write_text(json.dumps(self.report, indent=2) + "\n")
        print(f"[{case}] " + ", ".join(f"{k}={v}" for k, v in entry.items()) + f" ({path})")


@pytest.fixture(scope="session")
def session(tmp_path_factory, smollm2_dir) -> Session:
    return Session(tmp_path_factory.mktemp("quantized-smollm2"), smollm2_dir)


@pytest.fixture(scope="session")
def fp32(session) -> dict:
    report, stderr = session.generate("fp32", session.model)
    assert report is not None, f"fp32 plugin run failed:\n{stderr[-6000:]}"
    assert report["platform"] == "vllm_ascend.platform.cpu.AscendCPUPlatform"
    return report


def agreement(quant: dict, ref: dict) -> dict:
    """The metrics of the module docstring for a quantized report against the fp32 one."""
    prefix = same = total = tf_agree = 0
    worst_prefix = worst_tf = 0.0
    first_divergence = []
    for q, r, t in zip(quant["results"], ref["results"], quant["teacher"]):
        total += len(r["token_ids"])
        same += sum(a == b for a, b in zip(q["token_ids"], r["token_ids"]))
        diverged = None
        for pos, (tq, tr) in enumerate(zip(q["token_ids"], r["token_ids"])):
            if tq != tr:
                diverged = pos
                break
            worst_prefix = max(worst_prefix, abs(q["top"][pos][str(tq)] - r["top"][pos][str(tr)]))
            prefix += 1
        first_divergence.append(diverged)
        for pos, tr in enumerate(r["token_ids"]):
            tf_agree += t["top1"][pos] == tr
            worst_tf = max(worst_tf, abs(t["ref_logprob"][pos] - r["top"][pos][str(tr)]))
    return {"teacher_forced_agreement": round(tf_agree / total, 4),
            "greedy_prefix_agreement": round(prefix / total, 4),
            "greedy_position_match": round(same / total, 4),
            "max_logprob_diff": round(worst_tf, 4),
            "max_logprob_diff_prefix": round(worst_prefix, 4),
            "first_divergence": first_divergence}


def check_case(session: Session, fp32: dict, case: str) -> dict:
    method = CASES[case][2]
    ckpt = session.checkpoint(case)
    t0 = time.perf_counter()
    report, stderr = session.generate(case, ckpt, session.root / "fp32.json")
    elapsed = time.perf_counter() - t0
    if report is None:
        errors = [line for line in stderr.splitlines() if "Error" in line][-3:]
        session.record(case, {"status": "failed", "error": " | ".join(errors)[-600:]})
        pytest.fail(f"{case}: serving the quantized checkpoint failed:\n{stderr[-6000:]}")
    assert report["quantization"] == method, report["quantization"]
    for result in report["results"]:
        assert len(result["token_ids"]) == 32
        assert all(math.isfinite(lp) for pos in result["top"] for lp in pos.values())
    entry = {"status": "ok", **agreement(report, fp32), "serve_s": round(elapsed)}
    session.record(case, entry)
    return entry


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in FAST else pytest.mark.slow)
                                  for c in CASES])
def test_quantized_generates_like_fp32(session, fp32, case):
    entry = check_case(session, fp32, case)
    if case in GATED:
        assert entry["teacher_forced_agreement"] >= MIN_W8A8_DYNAMIC_AGREEMENT, entry
    if case == "W4A8_DYNAMIC-legacy":  # both formats load to identical tensors
        new, _ = session.generate("W4A8_DYNAMIC", session.checkpoint("W4A8_DYNAMIC"),
                                  session.root / "fp32.json")
        legacy = session.runs[case]["report"]
        assert new is not None
        assert [r["token_ids"] for r in new["results"]] == \
            [r["token_ids"] for r in legacy["results"]]



def fusion_counts(log: str) -> tuple[int, int]:
    """Sums of the fusion pass's per-graph log lines (vllm_ascend/compilation/fusion.py):
    (patterns replaced, per-token quantisations left unfused)."""
    hits = re.findall(r"vllm-ascend fusion: (\d+) norm/activation \+ quant patterns "
                      r"replaced, (\d+) per-token", log)
    return sum(int(a) for a, _ in hits), sum(int(b) for _, b in hits)


@pytest.mark.parametrize("case", ["W8A8_DYNAMIC",
                                  pytest.param("W4A8_DYNAMIC", marks=pytest.mark.slow)])
def test_quantized_compiled(session, fp32, case):
    """``vllm serve``'s default is torch.compile: the quantized path must trace (no graph
    break, a dynamic token count through the csrc kernels' meta functions), and the plugin's
    fusion pass must have rewritten the norm / SwiGLU + quant patterns into the fused ops.

    Both schemes quantise activations per token to int8, which makes the model a
    discontinuous function: the compiled graph's float rounding (fused norms, residual adds)
    moves its logprobs against eager's by 0.01-0.4 from the first token and can flip a
    rounding of xq, so the compiled run cannot be held to eager's tokens. It is held to the
    fp32 reference instead: teacher-forced agreement within MAX_COMPILED_AGREEMENT_LOSS of
    eager's (W8A8_DYNAMIC also >= MIN_W8A8_DYNAMIC_AGREEMENT). The same drift appears with
    ``VLLM_ASCEND_REFERENCE_EXACT=1`` and with vLLM's quant fusion passes off. Measured:
    W8A8_DYNAMIC teacher-forced 0.975 compiled vs 0.969 eager; W4A8_DYNAMIC 0.681 vs 0.669."""
    ckpt = session.checkpoint(case)
    name = f"{case}-compiled"
    out = session.root / f"{name}.json"
    env = vllm_env(VLLM_CACHE_ROOT=str(session.root / f"vllm-cache-{name}"))
    proc = subprocess.run([PYTHON, "-m", "tests.e2e.scored_generate", "--model", str(ckpt),
                           "--out", str(out), "--max-tokens", "32", "--compiled",
                           "--reference", str(session.root / "fp32.json")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    compiled = json.loads(out.read_text())
    fused, unfused = fusion_counts(proc.stdout + proc.stderr)
    # the plugin's pass rewrote norm / SwiGLU + per-token quant into the fused ops
    # (tests/ut/compilation checks that no such pattern survives in a graph)
    assert fused > 0, f"no fusion pass replacement logged (left unfused: {unfused})"
    entry = {"status": "ok", **agreement(compiled, fp32), "fused_patterns": fused,
             "unfused_quant": unfused}
    session.record(name, entry)
    if case == "W8A8_DYNAMIC":
        assert entry["teacher_forced_agreement"] >= MIN_W8A8_DYNAMIC_AGREEMENT, entry
    eager, log = session.generate(case, ckpt, session.root / "fp32.json")
    assert eager is not None, log[-6000:]
    eager_tf = agreement(eager, fp32)["teacher_forced_agreement"]
    assert entry["teacher_forced_agreement"] >= eager_tf - MAX_COMPILED_AGREEMENT_LOSS, \
        (entry, eager_tf)
