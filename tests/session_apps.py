"""Session apps for the session tests (loaded by the server with --app NAME=session_apps:...)."""

from __future__ import annotations

from typing import Any

from coserve import Graph, Input, Node, Output, Supervision
from coserve.server import Session, SessionPipeline


async def echo(message: dict[str, Any]) -> dict[str, Any]:
    """Answer with the message itself, and a count of what was said."""
    return {"echo": message}


def create_echo(session: Session) -> SessionPipeline:
    """One function node: what comes in goes back out."""
    graph = Graph("echo")
    node = graph.add(echo)
    return SessionPipeline(graph, node.inp, node.out)


def create_broken(session: Session) -> SessionPipeline:
    """An app whose factory fails: the session must close with 1011."""
    raise RuntimeError("this app cannot build a session")


class Fragile(Node):
    """Crashes on {"crash": true}; the graph allows no restart, so the session's graph fails."""

    inp: Input[dict[str, Any]]
    out: Output[dict[str, Any]]

    async def run(self) -> None:
        async for signal in self.inp:
            if signal.value.get("crash"):
                raise RuntimeError("asked to crash")
            await self.out.send(signal.derive({"ok": True}))


def create_fragile(session: Session) -> SessionPipeline:
    """A one-node graph that fails for good on its first crash."""
    graph = Graph("fragile", supervision=Supervision(max_restarts=0))
    node = graph.add(Fragile())
    return SessionPipeline(graph, node.inp, node.out)


class Pair(Node):
    """Needs two inputs; the unwired app connects only one."""

    left: Input[dict[str, Any]]
    right: Input[dict[str, Any]]
    out: Output[dict[str, Any]]

    async def run(self) -> None:
        async for left, _ in self.join(self.left, self.right, timeout=1.0):
            await self.out.send(left)


def create_unwired(session: Session) -> SessionPipeline:
    """A graph with a required input left unconnected: it fails validation when started."""
    graph = Graph("unwired")
    node = graph.add(Pair())
    return SessionPipeline(graph, node.left, node.out)


class Reject(Node):
    """Fails every message (a dead letter, answered 500) with an error ``pad`` characters long.

    The padding makes the error answers large, so a client that does not read them fills its
    socket quickly and the server's writer has to wait.
    """

    inp: Input[dict[str, Any]]
    out: Output[dict[str, Any]]

    async def run(self) -> None:
        async for signal in self.inp:
            self.fail(signal, RuntimeError("rejected " + "x" * int(signal.value.get("pad", 0))))


def create_rejecting(session: Session) -> SessionPipeline:
    """A one-node graph whose every message becomes an error answer (and an ERROR log line)."""
    graph = Graph("rejecting")
    node = graph.add(Reject())
    return SessionPipeline(graph, node.inp, node.out)
