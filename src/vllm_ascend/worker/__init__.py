"""vLLM workers of the NPU platform."""
