"""The demo tests use the shared tiny random bundle (tests/conftest.py: tiny_bundle_dir)."""

import pytest


@pytest.fixture(scope="session")
def demo_model_dir(tiny_bundle_dir):
    return tiny_bundle_dir
