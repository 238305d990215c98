"""Watching messages pass through nodes: a hook for tracing, off (None) by default.

A *hop* is a message's time at one node: from the node taking a signal off an input to the
node sending a signal with the same id on. Only signals that carry a ``trace`` are timed, and
only while a hop observer is installed, so the cost otherwise is one check per message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coserve.graph._node import Node
    from coserve.graph._signal import Signal

__all__ = ["HopObserver", "observer", "received", "sent", "set_hop_observer"]

HopObserver = Callable[["Node", "Signal[Any]", float, float], None]
"""Called with the node, the signal it sent, and when (``time.monotonic()``) it took the
request's signal in and sent it on."""

observer: HopObserver | None = None
"""The process's hop observer; set with :func:`set_hop_observer`."""

_MAX_OPEN = 1024  # hops a node may have open at once; the oldest are forgotten beyond


def set_hop_observer(new: HopObserver | None) -> HopObserver | None:
    """Install the process's hop observer (None: none); returns the one it replaces."""
    global observer
    old, observer = observer, new
    return old


def received(node: Node, signal: Signal[Any]) -> None:
    """A traced signal reached ``node``'s hands: its hop there begins (the first time)."""
    hops = node._hops
    if signal.id not in hops:
        if len(hops) >= _MAX_OPEN:  # a node that keeps what it takes (a sink): bounded
            del hops[next(iter(hops))]
        hops[signal.id] = time.monotonic()


def sent(node: Node, signal: Signal[Any]) -> None:
    """``node`` sends a traced signal on: the hop of its request ends, if one began."""
    began = node._hops.pop(signal.id, None)
    watcher = observer
    if began is not None and watcher is not None:
        watcher(node, signal, began, time.monotonic())
