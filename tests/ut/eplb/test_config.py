"""The ``eplb`` section of additional_config: every field validated, errors name it."""

from __future__ import annotations

import pytest

from vllm_ascend.eplb.config import (
    EplbConfig,
    EplbConfigError,
    check_against_model,
    eplb_config_from,
    parse_eplb_config,
)
from vllm_ascend.eplb.policies import DEFAULT_POLICY, list_policies


def test_defaults_follow_vllm():
    cfg = parse_eplb_config({"enabled": True})
    assert cfg == EplbConfig(enabled=True)
    assert (cfg.window_size, cfg.step_interval, cfg.num_redundant_experts) == (1000, 3000, 0)
    assert cfg.layers_per_step == 1 and cfg.collect == "all" and cfg.mode == "layerwise"
    assert cfg.policy_name == DEFAULT_POLICY
    assert eplb_config_from(None) == EplbConfig() and not eplb_config_from({}).enabled
    assert eplb_config_from({"ascend": {"eplb": {"enabled": True}}}).enabled


def test_all_fields_parse():
    cfg = parse_eplb_config({
        "enabled": True, "policy": "deepseek", "num_redundant_experts": 4, "window_size": 8,
        "step_interval": 16, "layers_per_step": 2, "collect": "decode",
        "expert_map_path": "/tmp/p.json", "record_path": "/tmp/r.json",
        "log_balancedness": True, "mode": "stop_the_world", "transfer_timeout_s": 5})
    assert cfg.policy_name == "deepseek" and cfg.num_redundant_experts == 4
    assert cfg.transfer_timeout_s == 5.0 and cfg.mode == "stop_the_world"


@pytest.mark.parametrize("section, field, accepted", [
    ({"enabled": "yes"}, "'enabled'", "true or false"),
    ({"log_balancedness": 1}, "'log_balancedness'", "true or false"),
    ({"num_redundant_experts": -1}, "'num_redundant_experts'", ">= 0"),
    ({"num_redundant_experts": 1.5}, "'num_redundant_experts'", "integer"),
    ({"window_size": 0}, "'window_size'", ">= 1"),
    ({"step_interval": True}, "'step_interval'", "integer"),
    ({"layers_per_step": 0}, "'layers_per_step'", ">= 1"),
    ({"collect": "both"}, "'collect'", "prefill, decode, all"),
    ({"mode": "fast"}, "'mode'", "layerwise, stop_the_world"),
    ({"expert_map_path": 3}, "'expert_map_path'", "file path"),
    ({"record_path": ""}, "'record_path'", "file path"),
    ({"transfer_timeout_s": 0}, "'transfer_timeout_s'", "> 0"),
    ({"policy": "nope"}, "'policy'", ", ".join(list_policies())),
    ({"enable": True}, "unknown key(s) ['enable']", "accepted keys: enabled"),
])
def test_bad_field_named_with_value_and_accepted(section, field, accepted):
    with pytest.raises(EplbConfigError) as err:
        parse_eplb_config(section)
    msg = str(err.value)
    assert "additional_config['ascend']['eplb']" in msg and field in msg and accepted in msg
    value = next(iter(section.values()))
    if field.startswith("'"):
        assert repr(value) in msg


def test_not_an_object():
    with pytest.raises(EplbConfigError, match="must be a JSON object"):
        parse_eplb_config([1])


@pytest.mark.parametrize("experts, redundant, ep, slots, match", [
    (16, 0, 2, 16, None),
    (16, 2, 2, 18, None),
    (16, 1, 2, None, "multiple of the EP size 2"),
    (16, 0, 1, None, "needs expert parallelism"),
    (4, 6, 2, None, "a rank would hold two replicas"),
])
def test_model_checks(experts, redundant, ep, slots, match):
    cfg = EplbConfig(enabled=True, num_redundant_experts=redundant)
    if match is None:
        assert check_against_model(cfg, experts, ep) == slots
    else:
        with pytest.raises(EplbConfigError, match=match):
            check_against_model(cfg, experts, ep)


def test_platform_validation_reaches_the_eplb_section():
    from types import SimpleNamespace

    from vllm_ascend.platform.common import validate_additional_config

    ok = SimpleNamespace(additional_config={"ascend": {"eplb": {"enabled": True}}})
    validate_additional_config(ok)
    bad = SimpleNamespace(additional_config={"ascend": {"eplb": {"collect": "x"}}})
    with pytest.raises(EplbConfigError, match="'collect'"):
        validate_additional_config(bad)
