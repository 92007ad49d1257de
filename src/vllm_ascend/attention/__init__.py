"""Attention backends of the NPU platform (``npu_fused_infer_attention_score``)."""
