"""The placement file: a versioned JSON document, written atomically.

::

    {"format": "vllm-ascend-eplb-placement", "version": 1,
     "num_experts": 256, "num_ranks": 64, "num_slots": 320,
     "layers": {"3": [17, 4, ...320 expert ids...], "4": [...], ...}}

``layers`` maps the model's layer index (as a string; dense layers are absent) to that
layer's slot -> logical expert list, slots rank-major. Every layer must pass
:func:`vllm_ascend.eplb.placement.validate_placement`. See docs/eplb.md, "Placement file".
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vllm_ascend.eplb.placement import check_placement, validate_placement

FORMAT = "vllm-ascend-eplb-placement"
VERSION = 1


class PlacementFileError(ValueError):
    """A placement file cannot be used; the message names the file, the field and what
    was expected."""


@dataclass(frozen=True)
class StoredPlacement:
    """A loaded placement file.

    Attributes:
        num_experts, num_ranks, num_slots: ``E``, ``W``, ``S``.
        layer_ids: ``(L,)`` model layer indices, ascending.
        placement: ``(L, S)`` int64, row ``i`` for layer ``layer_ids[i]``.
    """

    num_experts: int
    num_ranks: int
    num_slots: int
    layer_ids: tuple[int, ...]
    placement: np.ndarray

    def layer(self, layer_id: int) -> np.ndarray:
        """``(S,)`` placement of model layer ``layer_id`` (``KeyError`` names the known ones)."""
        try:
            return self.placement[self.layer_ids.index(layer_id)]
        except ValueError:
            raise KeyError(f"layer {layer_id} not in the placement; layers: "
                           f"{list(self.layer_ids)}") from None


def save_placement(path: str | os.PathLike, placement: np.ndarray | Mapping[int, Sequence[int]],
                   num_experts: int, num_ranks: int, *,
                   layer_ids: Sequence[int] | None = None) -> Path:
    """Validate and write a placement file atomically (temporary file, then rename).

    Args:
        path: destination.
        placement: ``(L, S)`` int array (with ``layer_ids``, default ``0 .. L-1``) or
            ``{layer index: (S,) slot -> expert}``.
        num_experts, num_ranks: ``E``, ``W``.

    Raises:
        PlacementError: the placement breaks an invariant (nothing is written).
    """
    if isinstance(placement, Mapping):
        ids = sorted(int(i) for i in placement)
        rows = np.asarray([np.asarray(placement[i]) for i in sorted(placement, key=int)])
    else:
        rows = np.asarray(placement)
        ids = list(range(rows.shape[0])) if layer_ids is None else [int(i) for i in layer_ids]
    if rows.ndim != 2 or len(ids) != rows.shape[0]:
        raise ValueError(f"placement must be (L, S) with one layer id per row; got shape "
                         f"{rows.shape} and {len(ids)} layer ids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate layer ids: {ids}")
    check_placement(rows, num_experts, num_ranks, layer_ids=ids)
    doc = {"format": FORMAT, "version": VERSION, "num_experts": int(num_experts),
           "num_ranks": int(num_ranks), "num_slots": int(rows.shape[1]),
           "layers": {str(i): [int(x) for x in row] for i, row in zip(ids, rows)}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_placement(path: str | os.PathLike, num_experts: int | None = None,
                   num_ranks: int | None = None, num_slots: int | None = None) -> StoredPlacement:
    """Read and check a placement file.

    Args:
        path: the file.
        num_experts, num_ranks, num_slots: when given, the file must match them.

    Raises:
        PlacementFileError: unreadable, not JSON, wrong format/version, a field missing or
            of the wrong type or value, a mismatch with the arguments, or a layer that
            breaks the placement invariants; the message names file, field and expectation.
    """
    path = Path(path)

    def fail(field: str, what: str) -> PlacementFileError:
        return PlacementFileError(f"placement file {path}: field {field!r}: {what}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlacementFileError(f"placement file {path}: cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlacementFileError(f"placement file {path}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise PlacementFileError(f"placement file {path}: expected a JSON object, got "
                                 f"{type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {doc.get('format')!r}")
    if doc.get("version") != VERSION:
        raise fail("version", f"expected {VERSION}, got {doc.get('version')!r}")
    sizes = {}
    for field, want in (("num_experts", num_experts), ("num_ranks", num_ranks),
                        ("num_slots", num_slots)):
        value = doc.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(field, f"expected a positive integer, got {value!r}")
        if want is not None and value != want:
            raise fail(field, f"is {value}, expected {want}")
        sizes[field] = value
    e, w, s = sizes["num_experts"], sizes["num_ranks"], sizes["num_slots"]
    if s % w or s < e:
        raise fail("num_slots", f"{s} must be a multiple of num_ranks ({w}) and >= "
                                f"num_experts ({e})")
    layers = doc.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise fail("layers", "expected a non-empty object {layer index: [expert id per slot]}")
    ids, rows = [], []
    for key, row in layers.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise fail(f"layers.{key}", "layer key must be a non-negative integer")
        if not isinstance(row, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in row):
            raise fail(f"layers.{key}", f"expected a list of {s} integer expert ids")
        ids.append(int(key))
        rows.append(row)
    problems = validate_placement(rows, e, w, num_slots=s, layer_ids=ids)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise fail("layers", problems[0] + more)
    order = np.argsort(ids)
    placement = np.asarray(rows, dtype=np.int64)[order]
    return StoredPlacement(e, w, s, tuple(int(ids[i]) for i in order), placement)
