"""The curated public API: what `coserve` exports, and how it presents itself."""

from __future__ import annotations

import inspect

import coserve
import coserve.batching
import coserve.channels


def test_every_exported_name_exists_and_is_documented() -> None:
    """Each name in coserve.__all__ resolves; every exported class and function has a docstring."""
    for name in coserve.__all__:
        obj = getattr(coserve, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"coserve.{name} has no docstring"


def test_public_names_present_themselves_as_coserve() -> None:
    """Public classes show as coserve.X, not as the private module they live in."""
    assert coserve.Batcher.__module__ == "coserve"
    assert repr(coserve.QueueFull) == "<class 'coserve.QueueFull'>"


def test_layer_modules_export_the_same_objects() -> None:
    """coserve.channels and coserve.batching re-export the very objects coserve exports."""
    for module in (coserve.channels, coserve.batching):
        for name in module.__all__:
            if name in coserve.__all__:
                assert getattr(module, name) is getattr(coserve, name)


def test_every_exported_exception_derives_from_coserve_error() -> None:
    """One exception hierarchy: every exception coserve exports is a CoserveError."""
    exceptions = [
        obj
        for obj in (getattr(coserve, name) for name in coserve.__all__)
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]
    assert len(exceptions) >= 10
    assert all(issubclass(e, coserve.CoserveError) for e in exceptions)
