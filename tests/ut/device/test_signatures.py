"""Every reference op has torch_npu's exact Python signature.

The source of truth is shared/reference/torch_npu_schemas.txt; ``data/`` holds a copy so
the test runs in a clone alone (CI), and ``test_schema_copy_matches_shared`` catches drift
where the shared dir is present. The copy may end with schemas the shared file lacks (after
the :data:`ADDED_MARKER` line), taken from torch_npu's documentation; they are read in
every mode, so every reference op stays covered.

Checks parameter names, order, the keyword-only boundary and default values against the
schema (any overload may match), that every reference op has a schema, that the ops the
plugin needs exist, and that the facade resolves to the reference backend here.
"""

from __future__ import annotations

import ast
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_ascend.device import facade, reference

SHARED_ENV = "VLLM_ASCEND_SHARED_DIR"

REQUIRED_OPS = [
    "npu_dynamic_quant",
    "npu_quantize",
    "npu_quant_matmul",
    "npu_weight_quant_batchmatmul",
    "npu_convert_weight_to_int4pack",
    "npu_format_cast",
    "npu_grouped_matmul",
    "npu_moe_gating_top_k",
    "npu_moe_gating_top_k_softmax",
    "npu_moe_init_routing_v2",
    "npu_moe_finalize_routing",
    "npu_moe_token_permute",
    "npu_moe_token_unpermute",
    "npu_moe_compute_expert_tokens",
    "npu_swiglu",
    "npu_dequant_swiglu_quant",
    "npu_swiglu_quant",
    "npu_grouped_matmul_swiglu_quant",
    "npu_add_rms_norm_quant",
    "npu_add_rms_norm_dynamic_quant",
    "npu_rms_norm",
    "npu_add_rms_norm",
    "npu_rotary_mul",
    "npu_apply_rotary_pos_emb",
    "npu_prefetch",
]

_NO_DEFAULT = object()
KW_ONLY, POSITIONAL = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD


SCHEMA_COPY = Path(__file__).resolve().parent / "data" / "torch_npu_schemas.txt"
#: The copy's lines after this one are schemas the shared file does not have.
ADDED_MARKER = "# Added in this repository"


def split_copy() -> tuple[str, list[str]]:
    """The copy's text up to the marker (the shared file's content) and its added lines."""
    text = SCHEMA_COPY.read_text()
    head, sep, tail = text.partition(ADDED_MARKER)
    added = [line for line in tail.splitlines()[1:] if line.strip()] if sep else []
    return head, added


def shared_schema_path() -> Path:
    override = os.environ.get(SHARED_ENV)
    shared = Path(override) if override else Path(__file__).resolve().parents[4] / "shared"
    return shared / "reference" / "torch_npu_schemas.txt"


def schema_path() -> Path:
    """The shared file when ``VLLM_ASCEND_SHARED_DIR`` names one, else the repo's copy."""
    return shared_schema_path() if os.environ.get(SHARED_ENV) else SCHEMA_COPY


@dataclass(frozen=True)
class Param:
    name: str
    default: object  # _NO_DEFAULT when the schema gives none
    kw_only: bool


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def parse_default(text: str) -> object:
    return ast.literal_eval(text.strip())


def parse_schema_line(line: str) -> tuple[str, list[Param]] | None:
    """``name[.overload](Type a, Type b=default, *, ...) -> ret`` -> (name, params).

    Lines without a return annotation (untyped, e.g. npu_dynamic_quant_v0) give None.
    """
    line = line.strip()
    if not line or "->" not in line:
        return None
    head, _, _ = line.rpartition("->")
    name, _, rest = head.partition("(")
    args = rest.strip()
    assert args.endswith(")"), line
    params, kw_only = [], False
    for item in _split_top_level(args[:-1]):
        if item == "*":
            kw_only = True
            continue
        decl, eq, default = item.partition("=")
        pname = decl.split()[-1]
        params.append(Param(pname, parse_default(default) if eq else _NO_DEFAULT, kw_only))
    return name.strip().split(".")[0], params


def load_schemas() -> dict[str, list[list[Param]]]:
    schemas: dict[str, list[list[Param]]] = {}
    for line in split_copy()[0].splitlines() if schema_path() == SCHEMA_COPY else \
            schema_path().read_text().splitlines():
        parsed = parse_schema_line(line)
        if parsed:
            schemas.setdefault(parsed[0], []).append(parsed[1])
    for line in split_copy()[1]:
        parsed = parse_schema_line(line)
        assert parsed, f"unparsable added schema line: {line}"
        assert parsed[0] not in schemas, \
            f"{parsed[0]} is in the shared file: drop it from the added lines"
        schemas[parsed[0]] = [parsed[1]]
    return schemas


@pytest.fixture(scope="module")
def schemas() -> dict[str, list[list[Param]]]:
    path = schema_path()
    assert path.is_file(), f"torch_npu schema file not found at {path}"
    return load_schemas()


def _defaults_equal(schema_default: object, py_default: object) -> bool:
    if schema_default == [] or schema_default == ():
        return py_default in (None, [], ())
    if isinstance(schema_default, bool) or isinstance(py_default, bool):
        return type(schema_default) is type(py_default) and schema_default == py_default
    return type(py_default) in (type(schema_default), int, float, type(None)) and (
        schema_default == py_default
    )


def mismatch(func, params: list[Param]) -> str | None:
    """Why func's signature differs from the schema params, or None if it matches."""
    sig = inspect.signature(func)
    actual = list(sig.parameters.values())
    names = [p.name for p in actual]
    if names != [p.name for p in params]:
        return f"names {names} != schema {[p.name for p in params]}"
    for want, got in zip(params, actual):
        kind = KW_ONLY if want.kw_only else POSITIONAL
        if got.kind != kind:
            return f"{got.name}: kind {got.kind.description} != {kind.description}"
        if want.default is _NO_DEFAULT:
            if got.default is not inspect.Parameter.empty:
                return f"{got.name}: has default {got.default!r}, schema has none"
        elif got.default is inspect.Parameter.empty:
            return f"{got.name}: no default, schema has {want.default!r}"
        elif not _defaults_equal(want.default, got.default):
            return f"{got.name}: default {got.default!r} != schema {want.default!r}"
    return None


# ----------------------------------------------------------------------------- parser


def test_parser_reads_defaults_and_kw_only_marker():
    name, params = parse_schema_line(
        "npu_x.overload(Tensor(a!) x, int[2] r=[], *, str m=\"pertoken\", float e=1e-06, "
        "Tensor? b=None, bool f=True, str h='half') -> (Tensor, Tensor)"
    )
    assert name == "npu_x"
    assert params == [
        Param("x", _NO_DEFAULT, False),
        Param("r", [], False),
        Param("m", "pertoken", True),
        Param("e", 1e-06, True),
        Param("b", None, True),
        Param("f", True, True),
        Param("h", "half", True),
    ]
    untyped = "npu_dynamic_quant_v0(input, smooth_scales, group_index, dst_type)"
    assert parse_schema_line(untyped) is None


def test_mismatch_reports_wrong_default_and_kind():
    params = parse_schema_line("f(Tensor a, *, int b=0) -> Tensor")[1]

    def good(a, *, b=0): ...

    def wrong_default(a, *, b=1): ...

    def not_kw_only(a, b=0): ...

    assert mismatch(good, params) is None
    assert "default" in mismatch(wrong_default, params)
    assert "kind" in mismatch(not_kw_only, params)


# ------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("name", sorted(reference.OPS))
def test_reference_op_matches_schema(name, schemas):
    assert name in schemas, f"reference op {name} has no torch_npu schema"
    reasons = [mismatch(reference.OPS[name], params) for params in schemas[name]]
    assert None in reasons, f"{name} matches no schema overload: {reasons}"


@pytest.mark.parametrize("name", REQUIRED_OPS)
def test_required_op_present(name):
    if name not in reference.OPS:
        pytest.fail(f"{name} is missing from the reference backend", pytrace=False)


# ------------------------------------------------------------------------------- facade


def test_facade_resolves_to_reference(monkeypatch):
    monkeypatch.delenv(facade.BACKEND_ENV, raising=False)
    assert facade.backend_name() == "reference"
    from vllm_ascend.device import ops
    from vllm_ascend.device.reference import activation

    assert ops.npu_rms_norm is activation.npu_rms_norm


def test_facade_forced_reference(monkeypatch):
    monkeypatch.setenv(facade.BACKEND_ENV, "reference")
    assert facade.backend_name() == "reference"


def test_facade_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv(facade.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=facade.BACKEND_ENV):
        facade.backend_name()


def test_schema_path_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    assert schema_path() == tmp_path / "reference" / "torch_npu_schemas.txt"
    monkeypatch.delenv(SHARED_ENV)
    assert schema_path() == SCHEMA_COPY
    assert shared_schema_path().parts[-3:] == ("shared", "reference", "torch_npu_schemas.txt")


def test_schema_copy_matches_shared(monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    shared = shared_schema_path()
    if not shared.is_file():
        pytest.skip(f"no shared dir next to the clone ({shared}): the copy is all there is")
    assert split_copy()[0] == shared.read_text(), (
        f"{SCHEMA_COPY} (up to {ADDED_MARKER!r}) differs from {shared}: copy the shared file "
        "over that part"
    )
