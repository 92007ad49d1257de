"""The accuracy runner reads what EPLB did from the engine's log (an EPLB layout's answers
equal to the single process's prove nothing unless experts moved)."""

from __future__ import annotations

from tests.e2e.accuracy.config import Config
from tests.e2e.accuracy.runner import eplb_activity, eplb_enabled

LINE = ("(EngineCore_DP0 pid=7) (Worker_TP{r} pid={pid}) INFO 12-07 17:01:02 [runtime.py:297] EPLB: rebalance {n} "
        "at step {s}: 2 layer(s), {m} slot(s) to move (planned in 1.3 ms)")


def test_slots_summed_per_rank_max_over_ranks():
    log = "\n".join([
        "(Worker_TP0 pid=11) INFO vllm-ascend 0.1.0 active: platform=AscendCPUPlatform",
        LINE.format(r=0, pid=11, n=1, s=3, m=4), LINE.format(r=1, pid=12, n=1, s=3, m=4),
        LINE.format(r=0, pid=11, n=2, s=6, m=2), LINE.format(r=1, pid=12, n=2, s=6, m=0),
    ])
    assert eplb_activity(log) == {"rebalance_lines": 4, "slots_moved_max_rank": 6,
                                  "failed_transfers": 0}


def test_no_prefix_single_process_and_failed_transfer():
    log = "\n".join([
        "INFO [runtime.py:297] EPLB: rebalance 1 at step 3: 1 layer(s), 0 slot(s) to move "
        "(planned in 0.4 ms)",
        "WARNING [mover.py:96] EPLB: expert transfer for layer(s) [0] failed (boom); the "
        "layer(s) keep their placement",
    ])
    assert eplb_activity(log) == {"rebalance_lines": 1, "slots_moved_max_rank": 0,
                                  "failed_transfers": 1}
    assert eplb_activity("") == {"rebalance_lines": 0, "slots_moved_max_rank": 0,
                                 "failed_transfers": 0}


def test_enabled_only_with_the_ascend_eplb_flag():
    def cfg(extra):
        return Config(name="x", model_name="tiny-adder", tasks=(), additional_config=extra)

    assert eplb_enabled(cfg({"ascend": {"eplb": {"enabled": True}}}))
    assert not eplb_enabled(cfg({"ascend": {"eplb": {"enabled": False}}}))
    assert not eplb_enabled(cfg({"ascend": {"moe_comm_method": "mc2"}}))
    assert not eplb_enabled(cfg({}))


def test_report_lists_eplb_activity(tmp_path):
    import json

    from tests.e2e.accuracy.report import render

    act = {"rebalance_lines": 4, "slots_moved_max_rank": 7, "failed_transfers": 0}
    (tmp_path / "tiny-qwen3-moe-dp2-ep-eplb.json").write_text(json.dumps(
        {"tasks": {}, "eplb": act}))
    text = render(tmp_path).read_text()
    assert "## EPLB activity" in text
    assert "- tiny-qwen3-moe-dp2-ep-eplb: 7 slot(s) moved (most on one rank, 4 rebalance " \
        "line(s) over the ranks), 0 failed transfer(s)" in text
