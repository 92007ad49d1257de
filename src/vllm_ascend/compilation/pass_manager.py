"""vLLM's post-grad pass manager plus the plugin's fusion pass.

Platforms return this class's qualified name from ``get_pass_manager_cls`` (vLLM's public
hook for a platform's Inductor passes); vLLM then builds and configures it for each compiled
model. The plugin's pass runs after vLLM's own passes (none of which match the plugin's ops).
"""

from __future__ import annotations

from vllm.compilation.passes.pass_manager import PostGradPassManager

#: ``Platform.get_pass_manager_cls()`` value.
QUALNAME = "vllm_ascend.compilation.pass_manager.AscendPassManager"


class AscendPassManager(PostGradPassManager):
    def configure(self, config) -> None:
        super().configure(config)
        from vllm_ascend.compilation.fusion import AscendQuantFusionPass

        self.passes.append(AscendQuantFusionPass(config))
