"""Shared test settings: a small thread count so parallel suites stay predictable on 2 cores,
and property tests that draw the same examples on every run (a CI failure reproduces)."""

import torch
from hypothesis import settings

torch.set_num_threads(2)
settings.register_profile("smallfoot", derandomize=True, print_blob=True)
settings.load_profile("smallfoot")
