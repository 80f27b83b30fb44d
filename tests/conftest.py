"""Shared fixtures."""

import pytest

from trial_helpers import tiny_config as _tiny_config


@pytest.fixture
def tiny_config():
    """``tiny_config(**changes)``: the shared tiny trainable config (tests/trial_helpers.py), changed."""
    return _tiny_config
