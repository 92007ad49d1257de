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


#: The Inductor option that runs a custom pass after Inductor's own post-grad passes.
POST_GRAD_KEY = "post_grad_custom_post_pass"


def install_for_plain_inductor(vllm_config) -> bool:
    """Put the plugin's fusion pass into the Inductor options of a plain ``torch.compile``.

    vLLM's CPU platform compiles with ``CompilationMode.DYNAMO_TRACE_ONCE`` and the
    ``"inductor"`` backend: ``torch.compile`` with ``compilation_config.inductor_compile_config``
    as its options, never vLLM's backend, so the platform's pass manager is not built. The
    worker calls this before the model is built (the compile wrapper reads the options then).
    Returns whether the pass was installed; refuses an option someone else already set (a
    silent replacement would drop their pass).
    """
    from vllm.config import CompilationMode

    compilation = vllm_config.compilation_config
    if compilation.mode != CompilationMode.DYNAMO_TRACE_ONCE or compilation.backend != "inductor":
        return False  # VLLM_COMPILE builds AscendPassManager; eager/none has no graph
    from vllm_ascend.compilation.fusion import AscendQuantFusionPass

    options = compilation.inductor_compile_config
    current = options.get(POST_GRAD_KEY)
    if isinstance(current, AscendQuantFusionPass):
        return True
    if current is not None:
        raise ValueError(f"compilation_config.inductor_compile_config[{POST_GRAD_KEY!r}] is "
                         f"already set ({current!r}); the plugin's fusion pass needs that "
                         "option on the CPU platform's plain Inductor compile")
    options[POST_GRAD_KEY] = AscendQuantFusionPass(vllm_config)
    return True
