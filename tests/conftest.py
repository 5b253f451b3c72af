"""Shared test settings: small thread count so parallel suites stay predictable on 2 cores."""

import torch

torch.set_num_threads(2)
