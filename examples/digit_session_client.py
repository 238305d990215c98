"""Talk to the digit assistant session app of a running ``coserve serve`` (``make serve``).

Each WebSocket connection to ``/sessions/digits`` gets its own graph on the server, which holds
this session's number, history and mode. This client draws a few digits from scikit-learn's
dataset, corrects one, switches to careful mode (the server inserts a node into this session's
pipeline) and back. Run it::

    python examples/digit_session_client.py --url ws://127.0.0.1:8000/sessions/digits
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import websockets
from sklearn.datasets import load_digits


async def ask(socket: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Send one message and wait for its answer."""
    await socket.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await socket.recv())
    return answer


async def main(url: str) -> None:
    """One short session."""
    digits = load_digits()
    async with websockets.connect(url) as socket:
        print("session:", json.loads(await socket.recv())["session"])
        for index in (4, 2, 7):
            answer = await ask(
                socket, {"id": f"img{index}", "image": digits.images[index].tolist()}
            )
            print(
                f"drew a {digits.target[index]}: read {answer['digit']}, number {answer['number']}"
            )
        print("correct to 5:", (await ask(socket, {"command": "correct", "digit": 5}))["number"])
        careful = await ask(socket, {"command": "mode", "mode": "careful", "threshold": 0.5})
        print(careful["message"])
        blank = await ask(socket, {"image": [[0] * 8] * 8})
        print("a blank image:", blank.get("message", blank))
        print((await ask(socket, {"command": "mode", "mode": "quick"}))["message"])
        print("history:", (await ask(socket, {"command": "history"}))["history"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/sessions/digits")
    asyncio.run(main(parser.parse_args().url))
