"""Talk to the digit assistant session app of a running ``coserve serve`` (``make serve``).

Each WebSocket connection to ``/sessions/digits`` gets its own graph on the server, which holds
this session's number, history and mode. This client draws three digits (from scikit-learn's
8x8 digits dataset, copied in below so that it needs only what ``make serve`` installs),
corrects one, switches to careful mode (the server inserts a node into this session's
pipeline) and back. Run it::

    python examples/digit_session_client.py --url ws://127.0.0.1:8000/sessions/digits
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import websockets

# Images 4, 2 and 7 of scikit-learn's load_digits() (pixels 0-16), with their true digits.
DIGITS = [
    (
        4,
        [
            [0, 0, 0, 1, 11, 0, 0, 0], [0, 0, 0, 7, 8, 0, 0, 0], [0, 0, 1, 13, 6, 2, 2, 0],
            [0, 0, 7, 15, 0, 9, 8, 0], [0, 5, 16, 10, 0, 16, 6, 0], [0, 4, 15, 16, 13, 16, 1, 0],
            [0, 0, 0, 3, 15, 10, 0, 0], [0, 0, 0, 2, 16, 4, 0, 0],
        ],
    ),
    (
        2,
        [
            [0, 0, 0, 4, 15, 12, 0, 0], [0, 0, 3, 16, 15, 14, 0, 0], [0, 0, 8, 13, 8, 16, 0, 0],
            [0, 0, 1, 6, 15, 11, 0, 0], [0, 1, 8, 13, 15, 1, 0, 0], [0, 9, 16, 16, 5, 0, 0, 0],
            [0, 3, 13, 16, 16, 11, 5, 0], [0, 0, 0, 3, 11, 16, 9, 0],
        ],
    ),
    (
        7,
        [
            [0, 0, 7, 8, 13, 16, 15, 1], [0, 0, 7, 7, 4, 11, 12, 0], [0, 0, 0, 0, 8, 13, 1, 0],
            [0, 4, 8, 8, 15, 15, 6, 0], [0, 2, 11, 15, 15, 4, 0, 0], [0, 0, 0, 16, 5, 0, 0, 0],
            [0, 0, 9, 15, 1, 0, 0, 0], [0, 0, 13, 5, 0, 0, 0, 0],
        ],
    ),
]  # fmt: skip


async def ask(socket: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Send one message and wait for its answer."""
    await socket.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(await socket.recv())
    return answer


async def main(url: str) -> None:
    """One short session."""
    async with websockets.connect(url) as socket:
        print("session:", json.loads(await socket.recv())["session"])
        for index, (digit, image) in enumerate(DIGITS):
            answer = await ask(socket, {"id": f"img{index}", "image": image})
            print(f"drew a {digit}: read {answer['digit']}, number {answer['number']}")
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
