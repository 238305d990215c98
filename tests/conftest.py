"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from helpers import RecordingModel


@pytest.fixture
def model() -> RecordingModel:
    """A fresh recording batch function, not held."""
    return RecordingModel()
