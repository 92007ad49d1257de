"""The plugin's logger: a child of vLLM's, so it shares vLLM's handler, level and format."""

import logging

logger = logging.getLogger("vllm.ascend")
