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
