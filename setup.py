"""Optional C++ code: ``csrc/`` -> ``vllm_ascend._C`` (the reference backend's CPU kernels,
x86, built against torch) and ``vllm_ascend._eplb`` (the EPLB ``incremental`` policy, plain
C++ with a C ABI loaded through ctypes, no torch: every architecture).

Package metadata lives in pyproject.toml; this file only declares the extension. It is
compiled against the installed torch, so the install must see that torch: ci/setup.sh runs
``pip install --no-build-isolation -e .`` (an isolated build environment would download a
different torch). Without torch at build time, or with ``VLLM_ASCEND_SKIP_CSRC=1``, the
package installs without the extension and the reference backend uses its plain PyTorch
math (same results, slower); ``vllm_ascend.device.reference.cpu_kernels`` says which.
"""

import os
import platform
import sys

from setuptools import setup


def _eplb_extension():
    from setuptools import Extension

    return Extension("vllm_ascend._eplb", ["csrc/eplb_incremental.cpp"], language="c++",
                     extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off",
                                         "-fno-fast-math"])


def _extensions():
    if os.environ.get("VLLM_ASCEND_SKIP_CSRC", "") in ("1", "true", "yes"):
        return [], {}
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return [_eplb_extension()], {}  # the torch kernels are x86 (AVX2/AVX-512) only
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("vllm-ascend: torch is not importable at build time; building without the C++ "
              "CPU kernels (use pip install --no-build-isolation)", file=sys.stderr)
        return [_eplb_extension()], {}
    ext = CppExtension(
        "vllm_ascend._C",
        ["csrc/cpu_kernels.cpp", "csrc/a8w4_kernels.cpp", "csrc/onednn_int8.cpp",
         "csrc/grouped_matmul.cpp", "csrc/moe_routing.cpp", "csrc/fused_quant.cpp",
         "csrc/moe_mlp.cpp", "csrc/norm_rope.cpp", "csrc/grouped_int8.cpp"],
        # No FMA contraction and no fast-math: dynamic_quant_int8 must round exactly like
        # the torch ops it mirrors. AVX2/AVX-512 code is enabled per function in the source.
        extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math",
                            "-Wno-maybe-uninitialized"],  # GCC 12 false positive (AVX-512)
    )
    return [ext, _eplb_extension()], {"build_ext": BuildExtension.with_options(use_ninja=False)}


_ext_modules, _cmdclass = _extensions()
setup(ext_modules=_ext_modules, cmdclass=_cmdclass)
