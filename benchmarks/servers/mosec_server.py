"""mosec serving the same SavedModel with its dynamic batching, for the serving benchmarks.

Runs in its own virtual environment (the benchmarks create ``benchmarks/.venv-mosec``). It takes
the same Open Inference Protocol JSON body as coserve at mosec's ``/inference`` route and batches
up to ``MOSEC_MAX_BATCH`` requests (default 64), waiting at most 2 ms for a batch to fill (the
settings of the peer study). ``MOSEC_WORKERS`` sets the number of Python worker processes
(default 1, as in the peer study). The model is ``BENCH_MODEL`` (default: the bundled digits
model; see ``peer_model.py``); rows of a variable-length input are padded to the batch's longest.
Run: ``python benchmarks/servers/mosec_server.py --port PORT --timeout 30000``.
"""

from __future__ import annotations

import os
import sys

from mosec import Server, Worker
from peer_model import PeerModel


class Model(Worker):
    """Deserialises each OIP body to its rows, runs batches through the signature."""

    def __init__(self) -> None:
        super().__init__()
        self.model = PeerModel()

    def forward(self, data: list[dict]) -> list[dict]:  # type: ignore[override]
        """Run one batch of deserialised requests through the signature."""
        rows = [self.model.decode(d["inputs"][0]) for d in data]
        output = self.model.run(self.model.batch(rows))
        answers, start = [], 0
        for row in rows:
            answers.append(self.model.answer(output[start : start + len(row)]))
            start += len(row)
        return answers


if __name__ == "__main__":
    server = Server()
    workers = int(os.environ.get("MOSEC_WORKERS", "1"))
    batch = int(os.environ.get("MOSEC_MAX_BATCH", "64"))
    server.append_worker(Model, num=workers, max_batch_size=batch, max_wait_time=2)
    server.run()
    sys.exit(0)
