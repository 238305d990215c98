"""An execute that raises."""


class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("boom")
