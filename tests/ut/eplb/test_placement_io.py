"""Placement JSON: round trip, atomic write, and every malformed file names file + field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vllm_ascend.eplb.placement import PlacementError
from vllm_ascend.eplb.placement_io import (FORMAT, PlacementFileError, load_placement,
                                           save_placement)
from vllm_ascend.eplb.policies.deepseek import deepseek


@pytest.fixture
def placement():
    return deepseek(np.random.default_rng(0).gamma(0.7, 10, size=(3, 16)), 4, 20)


def test_round_trip(tmp_path, placement):
    path = save_placement(tmp_path / "p.json", placement, 16, 4, layer_ids=[9, 3, 5])
    stored = load_placement(path, num_experts=16, num_ranks=4, num_slots=20)
    assert stored.layer_ids == (3, 5, 9)
    np.testing.assert_array_equal(stored.placement, placement[[1, 2, 0]])
    np.testing.assert_array_equal(stored.layer(9), placement[0])
    with pytest.raises(KeyError, match="layer 4 not in the placement"):
        stored.layer(4)
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]      # no temporary left
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["version"] == 1 and set(doc["layers"]) == {"3", "5", "9"}
    again = save_placement(tmp_path / "q.json", {int(k): v for k, v in doc["layers"].items()}, 16, 4)
    np.testing.assert_array_equal(load_placement(again).placement, stored.placement)


def test_invalid_placement_is_not_written(tmp_path, placement):
    bad = placement.copy()
    bad[0, :] = 0
    with pytest.raises(PlacementError):
        save_placement(tmp_path / "p.json", bad, 16, 4)
    assert not list(tmp_path.iterdir())


def _doc(placement):
    return {"format": FORMAT, "version": 1, "num_experts": 16, "num_ranks": 4,
            "num_slots": 20, "layers": {str(i): row.tolist() for i, row in enumerate(placement)}}


def _broken(placement, edit):
    doc = _doc(placement)
    edit(doc)
    return json.dumps(doc)


@pytest.mark.parametrize("case, field, expected", [
    ("not json", None, "not JSON"),
    ("list", None, "expected a JSON object"),
    ("format", "format", "expected 'vllm-ascend-eplb-placement'"),
    ("version", "version", "expected 1, got 2"),
    ("no experts", "num_experts", "expected a positive integer, got None"),
    ("ranks zero", "num_ranks", "expected a positive integer, got 0"),
    ("ranks mismatch", "num_ranks", "is 4, expected 8"),
    ("slots not multiple", "num_slots", "must be a multiple of num_ranks"),
    ("no layers", "layers", "non-empty object"),
    ("bad key", "layers.x", "non-negative integer"),
    ("not ints", "layers.0", "integer expert ids"),
    ("slot count", "layers", "layer 1: 19 slots, expected 20"),
    ("expert missing", "layers", "lost"),
    ("duplicate", "layers", "holds expert"),
    ("out of range", "layers", "outside [0, 16)"),
])
def test_malformed_file_names_file_and_field(tmp_path, placement, case, field, expected):
    def edit(doc):
        if case == "format": doc["format"] = "other"
        if case == "version": doc["version"] = 2
        if case == "no experts": del doc["num_experts"]
        if case == "ranks zero": doc["num_ranks"] = 0
        if case == "slots not multiple": doc["num_slots"] = 18; doc["num_ranks"] = 4
        if case == "no layers": doc["layers"] = {}
        if case == "bad key": doc["layers"]["x"] = doc["layers"]["0"]
        if case == "not ints": doc["layers"]["0"] = [0.5] * 20
        if case == "slot count": doc["layers"]["1"] = doc["layers"]["1"][:19]
        if case == "expert missing": doc["layers"]["2"] = [0, 1, 2, 3, 4] * 4
        if case == "duplicate":
            row = list(range(16)) + [0, 1, 2, 3]
            row[1] = 0                          # rank 0: expert 0 twice; 1 still on rank 3
            doc["layers"]["0"] = row
        if case == "out of range": doc["layers"]["0"] = list(range(15)) + [16] + [0, 1, 2, 3]

    path = tmp_path / "placement.json"
    text = {"not json": "{nope", "list": "[]"}.get(case) or _broken(placement, edit)
    path.write_text(text)
    kwargs = {"num_ranks": 8} if case == "ranks mismatch" else {}
    with pytest.raises(PlacementFileError) as info:
        load_placement(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and expected in message
    if field:
        assert f"field {field!r}" in message
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(PlacementFileError, match="cannot read"):
        load_placement(tmp_path / "absent.json")
