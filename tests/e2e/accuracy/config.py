"""Accuracy-gate configs (``configs/*.yaml``), in the schema of vLLM's lm-eval tests.

vLLM's ``.buildkite/lm-eval-harness/configs`` keys (``model_name``, ``tasks`` with
``metrics`` of ``name`` / ``value``, ``limit``, ``num_fewshot``, engine arguments such as
``max_model_len`` / ``enforce_eager`` / ``tensor_parallel_size``, ``env_vars``) plus:

- ``quantization``: a ``vllm_ascend.tools.quantize`` scheme (``W8A8_DYNAMIC``, ...); the
  checkpoint is quantized from the fp32 one before the run (absent: fp32);
- ``quantize_args``: extra ``vllm_ascend.tools.quantize`` arguments (e.g. a group size);
- ``data_parallel_size``, ``enable_expert_parallel``, ``additional_config`` (vLLM's
  ``--additional-config``, e.g. ``{"ascend": {"eplb": {...}}}``), ``max_num_seqs``;
- ``backend``: ``vllm`` (lm-eval's in-process engine) or ``local-completions`` (lm-eval's
  OpenAI client against ``vllm serve`` through the plugin);
- per metric ``tolerance`` (absolute, default :data:`DEFAULT_TOLERANCE`);
- ``reference``: another config's name. Its run on the same items is the baseline: a quant
  config passes if its Wilson lower bound is within ``tolerance`` below the reference's
  value; a layout config (``gate: equal``) must score exactly the reference's value and
  answer every item the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).with_name("configs")
BACKENDS = ("vllm", "local-completions")
GATES = ("expected", "reference", "equal")
DEFAULT_TOLERANCE = 0.03
_KEYS = {"model_name", "tasks", "limit", "num_fewshot", "quantization", "quantize_args",
         "tensor_parallel_size", "data_parallel_size", "enable_expert_parallel",
         "additional_config", "max_model_len", "max_num_seqs", "enforce_eager", "backend",
         "reference", "gate",
         "env_vars", "slow", "description"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Metric:
    name: str  # lm-eval's "metric,filter" key, e.g. "exact_match,none"
    value: float
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class Config:
    name: str  # the file's stem
    model_name: str
    tasks: tuple[Task, ...]
    limit: int | None = None
    num_fewshot: int = 0
    quantization: str | None = None
    quantize_args: tuple[str, ...] = ()
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False
    additional_config: dict[str, Any] = field(default_factory=dict)
    max_model_len: int = 512
    #: vLLM's --max-num-seqs (None: its default). Smaller batches mean more engine steps:
    #: EPLB configs need several rebalance intervals within the evaluation.
    max_num_seqs: int | None = None
    enforce_eager: bool = True
    backend: str = "vllm"
    reference: str | None = None
    gate: str = "expected"
    env_vars: dict[str, str] = field(default_factory=dict)
    slow: bool = True
    description: str = ""

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size


def _fail(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path.name}: {what}")


def _metric(path: Path, raw: Any) -> Metric:
    if not isinstance(raw, dict) or "name" not in raw or "value" not in raw:
        raise _fail(path, f"metric {raw!r} needs 'name' and 'value'")
    extra = set(raw) - {"name", "value", "tolerance"}
    if extra:
        raise _fail(path, f"metric {raw['name']!r}: unknown keys {sorted(extra)}; accepted: "
                          "name, value, tolerance")
    tol = float(raw.get("tolerance", DEFAULT_TOLERANCE))
    if not 0 <= tol <= 1:
        raise _fail(path, f"metric {raw['name']!r}: tolerance {tol} must be in [0, 1]")
    return Metric(str(raw["name"]), float(raw["value"]), tol)


def load(path: Path) -> Config:
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping")
    unknown = set(raw) - _KEYS
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}; accepted: {sorted(_KEYS)}")
    for key in ("model_name", "tasks"):
        if key not in raw:
            raise _fail(path, f"missing '{key}'")
    tasks = tuple(Task(str(t["name"]), tuple(_metric(path, m) for m in t.get("metrics", [])))
                  for t in raw["tasks"])
    if not tasks or any(not t.metrics for t in tasks):
        raise _fail(path, "every task needs at least one metric")
    backend = raw.get("backend", "vllm")
    if backend not in BACKENDS:
        raise _fail(path, f"backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    gate = raw.get("gate", "reference" if raw.get("reference") else "expected")
    if gate not in GATES:
        raise _fail(path, f"gate {gate!r}; accepted: {', '.join(GATES)}")
    if gate != "expected" and not raw.get("reference"):
        raise _fail(path, f"gate {gate!r} needs a 'reference' config")
    kwargs = {k: raw[k] for k in _KEYS - {"tasks", "quantize_args", "env_vars", "gate"}
              if k in raw}
    return Config(name=Path(path).stem, tasks=tasks, gate=gate,
                  quantize_args=tuple(str(a) for a in raw.get("quantize_args", [])),
                  env_vars={str(k): str(v) for k, v in raw.get("env_vars", {}).items()},
                  **kwargs)


def load_all(directory: Path = CONFIG_DIR) -> dict[str, Config]:
    """Every ``*.yaml`` in ``directory`` by name; references must exist."""
    configs = {p.stem: load(p) for p in sorted(Path(directory).glob("*.yaml"))}
    for cfg in configs.values():
        if cfg.reference and cfg.reference not in configs:
            raise ConfigError(f"{cfg.name}.yaml: reference {cfg.reference!r} is not a config; "
                              f"known: {', '.join(configs)}")
    return configs
