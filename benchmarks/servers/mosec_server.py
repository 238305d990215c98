"""mosec serving the same SavedModel with its dynamic batching, for benchmarks/serving.py.

Runs in its own virtual environment (the benchmark creates ``benchmarks/.venv-mosec``). It takes
the same Open Inference Protocol JSON body as coserve at mosec's ``/inference`` route and batches
up to 64 requests, waiting at most 2 ms for a batch to fill (the settings of the peer study).
``MOSEC_WORKERS`` sets the number of Python worker processes (default 1, as in the peer study).
Run: ``python benchmarks/servers/mosec_server.py --port PORT --timeout 30000``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from mosec import Server, Worker

SAVED_MODEL = (
    Path(__file__).resolve().parents[2]
    / "src" / "coserve" / "demo_models" / "digits" / "1" / "model.savedmodel"
)  # fmt: skip


class Digits(Worker):
    """Deserialises each OIP body to one image row, runs batches through the signature."""

    def __init__(self) -> None:
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.signature = tf.saved_model.load(str(SAVED_MODEL)).signatures["serving_default"]
        self.signature(image=tf.zeros((1, 8, 8, 1)))

    def forward(self, data: list[dict]) -> list[dict]:  # type: ignore[override]
        """Run one batch of deserialised requests through the signature."""
        images = np.concatenate(
            [
                np.asarray(d["inputs"][0]["data"], dtype=np.float32).reshape(
                    d["inputs"][0]["shape"]
                )
                for d in data
            ]
        )
        probabilities = self.signature(image=self.tf.constant(images))["probabilities"].numpy()
        return [
            {
                "model_name": "digits",
                "outputs": [
                    {
                        "name": "probabilities",
                        "shape": [1, 10],
                        "datatype": "FP32",
                        "data": row.tolist(),
                    }
                ],
            }
            for row in probabilities
        ]


if __name__ == "__main__":
    server = Server()
    workers = int(os.environ.get("MOSEC_WORKERS", "1"))
    server.append_worker(Digits, num=workers, max_batch_size=64, max_wait_time=2)
    server.run()
    sys.exit(0)
