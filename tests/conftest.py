"""Shared test settings: hypothesis profiles (fast by default, thorough with HYPOTHESIS_PROFILE=ci-long)."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci-long", parent=settings.get_profile("default"), max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Two cores: keep intra-op threads predictable for the unit tests.
torch.set_num_threads(min(2, torch.get_num_threads()))
