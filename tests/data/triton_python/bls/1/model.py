"""Calls another model from execute (Triton's BLS)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            inner = pb_utils.InferenceRequest(
                model_name="refuse",
                requested_output_names=["Y"],
                inputs=[pb_utils.get_input_tensor_by_name(request, "X")],
            )
            answer = inner.exec()
            responses.append(
                pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(answer, "Y")])
            )
        return responses
