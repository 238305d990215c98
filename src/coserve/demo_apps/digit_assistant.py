"""The digit assistant: a per-session graph that reads handwritten digits into a number.

Each WebSocket session at ``/sessions/digits`` gets its own pipeline::

    entry -> parse -> model:digits -> [careful] -> assistant -> exit

``model:digits`` is a :class:`~coserve.ModelNode`, so every session's images are batched
together (and with HTTP traffic). The assistant node holds the session's state: the number typed
so far, its history and corrections. The pipeline reshapes itself on command: ``careful`` mode
inserts a confidence gate before the assistant; ``quick`` mode removes it again.

Messages (JSON objects; an optional ``"id"`` is echoed in the answer):

* ``{"image": [...]}``: an 8x8 digit, 64 numbers (flat or nested) in [0, 1] or in 0..16 as in
  scikit-learn's digits. Answer: ``{"digit", "confidence", "accepted", "number"}``; in careful
  mode an unsure reading is not accepted, and the answer asks for the digit again.
* ``{"command": "undo" | "clear" | "history"}``;
  ``{"command": "correct", "digit": 7}`` replaces the last digit;
  ``{"command": "mode", "mode": "careful" | "quick", "threshold": 0.9}``.
  Answer: ``{"number", "history", "mode"}`` (plus ``"message"``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from coserve._exceptions import InvalidInput
from coserve.graph import Graph, Input, Node, Output
from coserve.models import ModelNode
from coserve.server import Session, SessionPipeline

__all__ = ["Assistant", "ConfidenceGate", "create", "parse"]

Message = dict[str, Any]
COMMANDS = ("undo", "clear", "history", "correct", "mode")
DEFAULT_THRESHOLD = 0.9
HISTORY = 100
"""History entries kept (the answers show the last 20): a session's state stays small."""


async def parse(message: Message) -> Message:
    """Check a client message; images become the model's input array."""
    if "image" in message:
        try:
            pixels = np.asarray(message["image"], dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"'image' must be 64 numbers: {error}") from None
        if pixels.size != 64:
            raise InvalidInput(f"'image' must hold 64 numbers (8x8), got {pixels.size}")
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 16:
            raise InvalidInput("'image' values must be in [0, 1] (or 0..16)")
        if pixels.max() > 1:
            pixels = pixels / 16.0
        return {"kind": "image", "image": pixels.reshape(1, 8, 8, 1)}
    command = message.get("command")
    if command not in COMMANDS:
        raise InvalidInput(f"send an 'image' or a 'command' (one of {', '.join(COMMANDS)})")
    if command == "correct":
        digit = message.get("digit")
        if not isinstance(digit, int) or isinstance(digit, bool) or not 0 <= digit <= 9:
            raise InvalidInput("'correct' needs a 'digit' from 0 to 9")
    if command == "mode":
        if message.get("mode") not in ("careful", "quick"):
            raise InvalidInput("'mode' is 'careful' or 'quick'")
        threshold = message.get("threshold", DEFAULT_THRESHOLD)
        if not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise InvalidInput("'threshold' must be in (0, 1]")
    return {"kind": "command", **message}


def _model_inputs(message: Message) -> dict[str, Any] | None:
    return {"image": message["image"]} if message["kind"] == "image" else None


def _reading(message: Message, outputs: dict[str, np.ndarray]) -> Message:
    probabilities = outputs["probabilities"][0]
    digit = int(np.argmax(probabilities))
    return {"kind": "reading", "digit": digit, "confidence": float(probabilities[digit])}


class ConfidenceGate(Node):
    """Careful mode: readings below the threshold are marked as not accepted."""

    inp: Input[Message]
    out: Output[Message]

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    async def run(self) -> None:
        """Mark each reading; pass commands through."""
        async for signal in self.inp:
            value = signal.value
            if value["kind"] == "reading" and value["confidence"] < self.threshold:
                value = {**value, "unsure": True}
            await self.out.send(signal.derive(value))


class Assistant(Node):
    """Holds the session's state and answers every message; switches modes by rewiring.

    Its state (the digits, the history, the mode and its threshold) is what a session store
    keeps: a client that resumes finds its number, and careful mode's gate wired in again.
    """

    inp: Input[Message]
    out: Output[Message]

    def __init__(self, model: ModelNode) -> None:
        self.model = model
        self.digits: list[int] = []
        self.history: deque[str] = deque(maxlen=HISTORY)
        self.mode = "quick"
        self.gate: ConfidenceGate | None = None

    def snapshot(self) -> Message:
        """The session's number, history and mode."""
        threshold = self.gate.threshold if self.gate is not None else None
        return {
            "digits": self.digits,
            "history": list(self.history),
            "mode": self.mode,
            "threshold": threshold,
        }

    def restore(self, state: Any) -> None:
        """Set the state back, and in careful mode put the gate back in the pipeline."""
        self.digits = [int(digit) for digit in state["digits"]]
        self.history = deque(state["history"], maxlen=HISTORY)
        self.mode = state["mode"]
        if self.mode == "careful":
            graph = self.graph
            assert graph is not None
            self.gate = graph.insert(
                ConfidenceGate(float(state["threshold"])), self.model.out, self.inp
            )

    async def run(self) -> None:
        """Answer readings and commands in the order they arrive."""
        async for signal in self.inp:
            value = signal.value
            answer = self._read(value) if value["kind"] == "reading" else self._command(value)
            await self.out.send(signal.derive(answer))

    def _read(self, reading: Message) -> Message:
        digit, confidence = reading["digit"], round(reading["confidence"], 4)
        if reading.get("unsure"):
            self.history.append(f"unsure {digit} ({confidence})")
            return {
                "digit": digit,
                "confidence": confidence,
                "accepted": False,
                "number": self.number,
                "message": f"not sure it is a {digit}: please draw it again",
            }
        self.digits.append(digit)
        self.history.append(f"read {digit}")
        return {"digit": digit, "confidence": confidence, "accepted": True, "number": self.number}

    def _command(self, command: Message) -> Message:
        name = command["command"]
        message = ""
        if name == "undo" and self.digits:
            self.history.append(f"undo {self.digits.pop()}")
        elif name == "clear":
            self.digits.clear()
            self.history.append("clear")
        elif name == "correct":
            if self.digits:
                old = self.digits.pop()
                self.history.append(f"correct {old} -> {command['digit']}")
            else:
                self.history.append(f"add {command['digit']}")
            self.digits.append(command["digit"])
        elif name == "mode":
            message = self._switch(command["mode"], command.get("threshold", DEFAULT_THRESHOLD))
        answer: Message = {
            "number": self.number,
            "mode": self.mode,
            "history": list(self.history)[-20:],
        }
        if message:
            answer["message"] = message
        return answer

    def _switch(self, mode: str, threshold: float) -> str:
        """Reshape this session's pipeline: the gate goes in or out between model and here."""
        graph = self.graph
        assert graph is not None
        if mode == "careful":
            if self.gate is not None:
                self.gate.threshold = threshold
            else:
                self.gate = graph.insert(ConfidenceGate(threshold), self.model.out, self.inp)
            self.history.append(f"mode careful ({threshold:g})")
        elif self.gate is not None:
            graph.remove(self.gate, bridge=True)
            self.gate = None
            self.history.append("mode quick")
        self.mode = mode
        return f"{mode} mode: {self._path()}"

    def _path(self) -> str:
        """The live route from the model to this node, as the graph is wired now."""
        names = [self.model.name]
        node: Node = self.model
        while node is not self:
            links = node.outputs["out"].links
            if not links:
                break
            node = links[0].input.node
            names.append(node.name)
        return " -> ".join(names)

    @property
    def number(self) -> str:
        """The digits read so far."""
        return "".join(map(str, self.digits))


def create(session: Session) -> SessionPipeline:
    """Build one session's pipeline (the factory ``coserve serve`` registers as ``digits``)."""
    graph = Graph(f"digits:{session.id[:8]}")
    parser = graph.add(parse)
    model = graph.add(
        ModelNode(session.models.get("digits"), prepare=_model_inputs, combine=_reading)
    )
    assistant = graph.add(Assistant(model))
    graph.connect(parser.out, model.inp)
    graph.connect(model.out, assistant.inp)
    return SessionPipeline(graph, parser.inp, assistant.out)
