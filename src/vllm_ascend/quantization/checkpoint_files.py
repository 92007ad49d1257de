"""Which file of a checkpoint directory holds a tensor: for error messages only.

``model.safetensors.index.json``'s ``weight_map`` answers when present; otherwise the
safetensors headers of ``*.safetensors`` in the directory are read once (headers only, no
tensor data). Nothing here raises: an unreadable directory just means "file unknown".
"""

from __future__ import annotations

import glob
import json
import os

INDEX_FILE = "model.safetensors.index.json"


class CheckpointFiles:
    """Lazy ``tensor name -> file name`` lookup over one local checkpoint directory."""

    def __init__(self, model_dir: str | None) -> None:
        self.model_dir = model_dir if model_dir and os.path.isdir(model_dir) else None
        self._where: dict[str, str] | None = None

    def _scan(self) -> dict[str, str]:
        where: dict[str, str] = {}
        if self.model_dir is None:
            return where
        try:
            with open(os.path.join(self.model_dir, INDEX_FILE)) as f:
                weight_map = json.load(f).get("weight_map", {})
            if isinstance(weight_map, dict):
                return {str(k): str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, AttributeError):
            pass
        try:
            from safetensors import safe_open

            for path in sorted(glob.glob(os.path.join(self.model_dir, "*.safetensors"))):
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        where.setdefault(key, os.path.basename(path))
        except Exception:  # noqa: BLE001 - best effort, messages only
            pass
        return where

    def file_of(self, tensor: str) -> str | None:
        """The file holding ``tensor`` (relative to the directory), or None if unknown."""
        if self._where is None:
            self._where = self._scan()
        return self._where.get(tensor)

    def describe(self) -> str:
        """The checkpoint's files, for "not found" messages."""
        if self._where is None:
            self._where = self._scan()
        files = sorted(set(self._where.values()))
        return ", ".join(files) if files else "no safetensors files found"
