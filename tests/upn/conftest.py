"""Shared fixtures for UPN tests: a deliberately small upn-tiny variant for speed."""
import pytest
import torch

from upn import get_config


@pytest.fixture(autouse=True)
def _two_threads():
    # The CI box has 2 cores shared with other jobs.
    torch.set_num_threads(2)


@pytest.fixture
def small_config():
    """upn-tiny with fewer queries and 128 px images: same code paths, faster."""
    cfg = get_config("upn-tiny")
    cfg.transformer.num_queries = 50
    cfg.image.short_side = 128
    cfg.image.max_size = 192
    return cfg
