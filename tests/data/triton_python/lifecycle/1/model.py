"""Writes the args it was initialized with, and a marker when finalized, into its folder."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
from helper import double


class TritonPythonModel:
    def initialize(self, args):
        self.folder = Path(args["model_repository"])
        (self.folder / "args.json").write_text(json.dumps(args))

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", double(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()))]
            )
            for r in requests
        ]

    def finalize(self):
        (self.folder / "finalized").write_text("yes")
