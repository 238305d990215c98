"""A sum computed by an async execute, as Triton allows."""

import asyncio
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.lock = None
        self.loop_thread = None

    async def execute(self, requests):
        # An asyncio object made on the first call must still work on the later ones: the
        # model's loop is the same for its lifetime.
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            await asyncio.sleep(0)
        thread = threading.current_thread().name
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.add(a, b))]))
        self.loop_thread = thread
        return responses
