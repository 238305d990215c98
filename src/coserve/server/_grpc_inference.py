"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``, Triton's flavour.

The driver between gRPC messages (``_protos``) and the inference service (``_service``): health,
metadata, ``ModelInfer``, Triton's statistics and model repository RPCs (``ModelStatistics``,
``RepositoryIndex``, ``RepositoryModelLoad``, ``RepositoryModelUnload``: the HTTP endpoints'
implementations, ``_statistics`` and ``_model_control``, with their semantics and errors), and
Triton's ``ModelStreamInfer``, the talk's actor pattern over one
bidirectional stream: every request on it is its own child coroutine, answered as soon as it is
ready, tagged with its id, in any order, at most ``max_in_flight`` at once per stream (reading
pauses at the bound). A stream that the client cancels drops its work that has not run; one that
the client half-closes gets every answer first.

Tensors arrive as ``raw_input_contents`` (what tritonclient sends) or as the typed ``contents``
fields (Go and grpcurl clients), never both in one request; answers are always raw, since
tritonclient reads only ``raw_output_contents``. BYTES elements are 4-byte little-endian lengths
and the bytes, as on the REST binary extension. Triton's ``timeout`` (µs) and ``priority``
parameters, and the call's own deadline, reach the batcher; a cancelled call withdraws its
request before it runs. Errors map to gRPC status codes through ``_errors``, as Triton maps them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format

from coserve import __version__
from coserve._exceptions import DeadlineExceeded, InvalidInput, ModelNotFound
from coserve.models import ModelHandle, dtype_of
from coserve.models._triton_config import triton_model_config
from coserve.server._classification import check_classifiable, class_count, classify
from coserve.server._errors import Failure, report
from coserve.server._grpc_handlers import Undecodable, abort, parser, unary, unimplemented
from coserve.server._model_control import ModelControl
from coserve.server._protos import (
    InferParameter,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ModelStatisticsRequest,
    ModelStatisticsResponse,
    ModelStreamInferResponse,
    RepositoryIndexRequest,
    RepositoryIndexResponse,
    RepositoryModelLoadRequest,
    RepositoryModelLoadResponse,
    RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from coserve.server._protos.model_config import (
    ModelConfig,
    ModelConfigRequest,
    ModelConfigResponse,
)
from coserve.server._service import EXTENSIONS, Call, InferenceService
from coserve.server._statistics import model_statistics, select_handles
from coserve.server._v2_codec import MAX_DIMENSIONS, binary_tensor, reshape, tensor_from_binary

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

__all__ = ["SERVICE", "InferenceServicer", "answer", "decode_inputs", "encode_outputs", "submit"]

logger = logging.getLogger("coserve.server")

SERVICE = "inference.GRPCInferenceService"
PROTOCOL = "grpc"
STREAM_PROTOCOL = "grpc-stream"

# Triton's RPCs that coserve does not serve: answered UNIMPLEMENTED, with what it does serve.
UNIMPLEMENTED = (
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)

# The typed field that carries each datatype's elements; FP16 and BF16 have none (raw only).
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# -- messages to arrays and back ------------------------------------------------------------------


def _parameters(parameters: Mapping[str, InferParameter]) -> dict[str, Any]:
    """Parameters as plain values, whichever of the five variants each one uses."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _shape(name: str, dims: Any) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(
            f"input {name!r}: 'shape' has {len(shape)} dimensions; at most {MAX_DIMENSIONS}"
        )
    for dimension in shape:
        if dimension < 0:
            raise InvalidInput(f"input {name!r}: 'shape' must be non-negative, got {list(shape)}")
    return shape


def _typed(
    name: str, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], tensor: Any
) -> np.ndarray:
    """A tensor from the typed ``contents`` field its datatype uses (and no other)."""
    field = _TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    for descriptor, _ in tensor.contents.ListFields():
        if descriptor.name != field:
            raise InvalidInput(
                f"input {name!r}: a {datatype} tensor's elements go in contents.{field}, "
                f"not contents.{descriptor.name}"
            )
    values = getattr(tensor.contents, field)
    count = len(values)
    if count != math.prod(shape):
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} elements, but "
            f"contents.{field} has {count}"
        )
    if datatype == "BYTES":
        flat = np.empty(count, dtype=object)
        flat[:] = list(values)
        return reshape(name, flat, shape)
    try:
        flat = np.fromiter(values, dtype=dtype, count=count)
    except (OverflowError, ValueError):  # int_contents of 300 for an INT8 input, say
        raise InvalidInput(f"input {name!r}: values do not fit {datatype}") from None
    return reshape(name, flat, shape)


def decode_inputs(request: ModelInferRequest) -> dict[str, np.ndarray]:
    """A request's input tensors by name, from raw or typed contents.

    Raises:
        InvalidInput: Unknown datatypes, bad shapes, byte sizes that do not match, or raw and
            typed contents mixed.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; it "
            "needs one per input, in order"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        datatype = tensor.datatype.upper()
        try:
            dtype = dtype_of(datatype)
        except ValueError as error:
            raise InvalidInput(f"input {name!r}: {error}") from None
        shape = _shape(name, tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {name!r} has typed contents, but the request sends its tensors in "
                    "raw_input_contents: use one or the other for every input"
                )
            data = memoryview(raw[index])
            if datatype != "BYTES" and len(data) != math.prod(shape) * dtype.itemsize:
                raise InvalidInput(
                    f"input {name!r}: shape {list(shape)} of {datatype} needs "
                    f"{math.prod(shape) * dtype.itemsize} bytes, but raw_input_contents[{index}] "
                    f"has {len(data)}"
                )
            arrays[name] = tensor_from_binary(name, datatype, dtype, shape, data)
        elif tensor.HasField("contents"):
            arrays[name] = _typed(name, datatype, dtype, shape, tensor)
        elif math.prod(shape) == 0:
            arrays[name] = reshape(name, np.empty(0, dtype=dtype), shape)
        else:
            raise InvalidInput(f"input {name!r} has no contents and no raw_input_contents")
    return arrays


def encode_outputs(
    response: ModelInferResponse,
    handle: ModelHandle,
    outputs: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str] | None = None,
) -> None:
    """Every output into ``response``, always as ``raw_output_contents``."""
    datatypes = handle.output_datatypes if datatypes is None else datatypes
    for name, array in outputs.items():
        datatype = datatypes.get(name, "BYTES")
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(binary_tensor(array, datatype))


def submit(
    service: InferenceService,
    handle: ModelHandle,
    request: ModelInferRequest,
    deadline: float | None,
    call: Call,
) -> tuple[asyncio.Future[dict[str, np.ndarray]], list[str] | None]:
    """Queue a request on its model: the future of its outputs, and the outputs it asked for.

    Raises:
        InvalidInput, QueueFull, BatcherClosed, DeadlineExceeded: as ``InferenceService``.
    """
    service.admit(handle)
    inputs = decode_inputs(request)
    outputs = [tensor.name for tensor in request.outputs] or None
    check_classifiable(handle.output_datatypes, _class_counts(request))
    future = service.submit(
        handle,
        inputs,
        outputs=outputs,
        parameters=_parameters(request.parameters) if request.parameters else None,
        timeout=deadline,
        call=call,
    )
    return future, outputs


def answer(
    handle: ModelHandle,
    request: ModelInferRequest,
    result: dict[str, np.ndarray],
    outputs: list[str] | None,
) -> ModelInferResponse:
    """The response to a request: the outputs it asked for, raw, its id echoed."""
    response = ModelInferResponse(
        model_name=handle.name, model_version=handle.version, id=request.id
    )
    selected, datatypes = classify(
        InferenceService.select(result, outputs),
        handle.output_datatypes,
        _class_counts(request),
        handle.labels,
        batched=handle.backend.batched,
    )
    encode_outputs(response, handle, selected, datatypes)
    return response


def _class_counts(request: ModelInferRequest) -> dict[str, int]:
    """The requested outputs asked for as their top classes (Triton's classification)."""
    counts = {}
    for tensor in request.outputs:
        parameter = tensor.parameters.get("classification")
        if parameter is not None:
            choice = parameter.WhichOneof("parameter_choice")
            value = getattr(parameter, choice) if choice else None
            counts[tensor.name] = class_count(tensor.name, value)
    return counts


# -- the servicer ---------------------------------------------------------------------------------


class InferenceServicer:
    """``inference.GRPCInferenceService`` over the inference service.

    Args:
        service: The inference service (the same one the HTTP drivers use).
        draining: Set when the server begins to shut down: streams stop reading, answer what
            they accepted, and end with ``UNAVAILABLE``.
        max_streams: Streams open at once; one more is refused with ``RESOURCE_EXHAUSTED``.
        max_in_flight: Requests in flight on one stream at once; reading pauses at the bound.
        control: The repository API (the same one HTTP serves); None: an index of what is
            served, and no loading or unloading.
    """

    def __init__(
        self,
        service: InferenceService,
        draining: asyncio.Event,
        *,
        max_streams: int = 1000,
        max_in_flight: int = 256,
        control: ModelControl | None = None,
    ) -> None:
        self._service = service
        self._control = control or ModelControl(service.state.repository, None, "none")
        self._draining = draining
        self._max_streams = max_streams
        self._max_in_flight = max_in_flight
        self._streams = 0

    def methods(self) -> tuple[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
        """The service's name and method handlers, Triton's unserved RPCs (UNIMPLEMENTED) too."""
        methods = {
            "ServerLive": unary(self.server_live, ServerLiveRequest, ServerLiveResponse),
            "ServerReady": unary(self.server_ready, ServerReadyRequest, ServerReadyResponse),
            "ModelReady": unary(self.model_ready, ModelReadyRequest, ModelReadyResponse),
            "ServerMetadata": unary(
                self.server_metadata, ServerMetadataRequest, ServerMetadataResponse
            ),
            "ModelMetadata": unary(
                self.model_metadata, ModelMetadataRequest, ModelMetadataResponse
            ),
            "ModelConfig": unary(self.model_config, ModelConfigRequest, ModelConfigResponse),
            "ModelInfer": unary(self.model_infer, ModelInferRequest, ModelInferResponse),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer,
                request_deserializer=parser(ModelInferRequest),
                response_serializer=ModelStreamInferResponse.SerializeToString,
            ),
            "ModelStatistics": unary(
                self.model_statistics, ModelStatisticsRequest, ModelStatisticsResponse
            ),
            "RepositoryIndex": unary(
                self.repository_index, RepositoryIndexRequest, RepositoryIndexResponse
            ),
            "RepositoryModelLoad": unary(
                self.repository_model_load, RepositoryModelLoadRequest, RepositoryModelLoadResponse
            ),
            "RepositoryModelUnload": unary(
                self.repository_model_unload,
                RepositoryModelUnloadRequest,
                RepositoryModelUnloadResponse,
            ),
        }
        *others, last = methods
        served = f"{', '.join(others)} and {last}"
        for name in UNIMPLEMENTED:
            methods[name] = unimplemented(f"{SERVICE}/{name}", served)
        return SERVICE, methods

    # -- health and metadata -----------------------------------------------------------------

    async def server_live(self, request: ServerLiveRequest, context: Context) -> ServerLiveResponse:
        """Always live while it answers."""
        return ServerLiveResponse(live=True)

    async def server_ready(
        self, request: ServerReadyRequest, context: Context
    ) -> ServerReadyResponse:
        """Ready once the models are loaded, until shutdown begins."""
        return ServerReadyResponse(ready=self._service.state.ready)

    async def model_ready(self, request: ModelReadyRequest, context: Context) -> ModelReadyResponse:
        """Whether the model version is loaded and the server ready (unknown: not ready)."""
        state = self._service.state
        try:
            handle = state.repository.get(request.name, request.version or None)
        except ModelNotFound:
            return ModelReadyResponse(ready=False)
        return ModelReadyResponse(ready=state.ready and not handle.closed)

    async def server_metadata(
        self, request: ServerMetadataRequest, context: Context
    ) -> ServerMetadataResponse:
        """The server's name, version and protocol extensions."""
        return ServerMetadataResponse(name="coserve", version=__version__, extensions=EXTENSIONS)

    async def model_metadata(
        self, request: ModelMetadataRequest, context: Context
    ) -> ModelMetadataResponse:
        """A model version's platform, versions, inputs and outputs."""
        repository = self._service.state.repository
        try:
            handle = repository.get(request.name, request.version or None)
        except Exception as error:
            await abort(context, report(error, f"metadata of {request.name!r}"))
            raise  # not reached: abort raises
        response = ModelMetadataResponse(
            name=handle.name,
            versions=[m.version for m in repository.models() if m.name == handle.name],
            platform=handle.platform,
        )
        for specs, tensors in (
            (handle.inputs, response.inputs),
            (handle.outputs, response.outputs),
        ):
            for spec in specs:
                tensors.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    async def model_config(self, request: Any, context: Context) -> Any:
        """The model's config, as ``GET /v2/models/{m}/config`` gives it.

        tritonclient's ``get_model_config``: a Triton model's completed ``config.pbtxt``, any
        other model's made from its coserve config.
        """
        repository = self._service.state.repository
        try:
            handle = repository.get(request.name, request.version or None)
            config = handle.live_config(repository.config(handle.name))
        except Exception as error:
            await abort(context, report(error, f"config of {request.name!r}"))
            raise  # not reached: abort raises
        message = ModelConfig()
        json_format.ParseDict(
            triton_model_config(config, handle.inputs, handle.outputs),
            message,
            ignore_unknown_fields=True,
        )
        return ModelConfigResponse(config=message)

    # -- statistics and the model repository -------------------------------------------------

    async def model_statistics(
        self, request: ModelStatisticsRequest, context: Context
    ) -> ModelStatisticsResponse:
        """Triton's statistics of every model, every version of one, or one version.

        An unknown model or version is ``INVALID_ARGUMENT``, as in Triton (HTTP: 400).
        """
        repository = self._service.state.repository
        try:
            handles = select_handles(repository, request.name or None, request.version or None)
        except Exception as error:
            if isinstance(error, ModelNotFound):  # Triton's INVALID_ARG, not NOT_FOUND
                error = InvalidInput(str(error))
            await abort(context, report(error, f"statistics of {request.name or 'every model'}"))
            raise  # not reached: abort raises
        # The JSON answer's field names are the message's: one implementation for both.
        return json_format.ParseDict(model_statistics(handles), ModelStatisticsResponse())

    async def repository_index(
        self, request: RepositoryIndexRequest, context: Context
    ) -> RepositoryIndexResponse:
        """Every model folder and its state (only the ready ones with ``ready``)."""
        try:
            entries = await self._control.repository_index(request.ready)
        except Exception as error:
            await abort(context, report(error, "repository index"))
            raise  # not reached: abort raises
        response = RepositoryIndexResponse()
        for entry in entries:
            response.models.add(**entry)
        return response

    async def repository_model_load(
        self, request: RepositoryModelLoadRequest, context: Context
    ) -> RepositoryModelLoadResponse:
        """Serve a model (explicit mode only; a config or files override is refused)."""
        try:
            parameters = {
                key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                for key, value in request.parameters.items()
            }
            await self._control.load_model(request.model_name, parameters)
        except Exception as error:
            await abort(context, report(error, f"load of {request.model_name!r}"))
            raise  # not reached: abort raises
        return RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: RepositoryModelUnloadRequest, context: Context
    ) -> RepositoryModelUnloadResponse:
        """Drain a model's requests, then unload it (explicit mode only)."""
        try:
            await self._control.unload_model(request.model_name)
        except Exception as error:
            await abort(context, report(error, f"unload of {request.model_name!r}"))
            raise  # not reached: abort raises
        return RepositoryModelUnloadResponse()

    # -- inference ---------------------------------------------------------------------------

    async def model_infer(self, request: ModelInferRequest, context: Context) -> ModelInferResponse:
        """One request: decoded, batched with everyone else's, answered raw."""
        call = self._service.begin(PROTOCOL, context.invocation_metadata())
        handle: ModelHandle | None = None
        try:
            handle = self._service.resolve(request.model_name, request.model_version or None)
            response = await self._infer(handle, request, context.time_remaining(), call)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            self._service.observe(call, handle, "CANCELLED")
            raise
        except Exception as error:
            failure = self._failure(error, request.model_name, context.time_remaining())
            self._service.observe(call, handle, failure.grpc_code)
            await abort(context, failure)
            raise  # not reached: abort raises
        self._service.observe(call, handle, "OK")
        return response

    async def _infer(
        self,
        handle: ModelHandle,
        request: ModelInferRequest,
        deadline: float | None,
        call: Call,
    ) -> ModelInferResponse:
        future, outputs = submit(self._service, handle, request, deadline, call)
        try:
            result = await future
        finally:
            future.cancel()  # a no-op once done; withdraws the request if the call was cancelled
        return answer(handle, request, result, outputs)

    @staticmethod
    def _failure(error: BaseException, model: str, remaining: float | None) -> Failure:
        failure = report(error, f"gRPC inference on {model}")
        if isinstance(error, DeadlineExceeded) and remaining is not None and remaining <= 0.001:
            # The call's own deadline, not Triton's queue timeout: gRPC's status for it.
            return Failure(504, "DEADLINE_EXCEEDED", failure.level, failure.message)
        return failure

    async def model_stream_infer(
        self, requests: AsyncIterator[ModelInferRequest | Undecodable], context: Context
    ) -> AsyncIterator[ModelStreamInferResponse]:
        """Triton's stream: each request on its own, answered as soon as it is ready."""
        if self._streams >= self._max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._max_streams} open streams",
            )
        self._streams += 1
        try:
            async for answer in _Stream(self, requests, context).run():
                yield answer
        finally:
            self._streams -= 1


class _Stream:
    """One ``ModelStreamInfer`` call: a reader that starts each request, and this call's writes.

    A request's life is its own from the moment it is read: decoded and queued at once, then
    answered from its future's callback, so requests run concurrently and their answers go out
    in the order they are ready. (Callbacks, not a task per request: the same independence
    without a task's cost, which on a stream of small requests is a fifth of the loop's work.)
    A slot is taken before each read and given back once its answer is written, so at most
    ``max_in_flight`` requests are in flight or waiting to be written; reading pauses at the
    bound.
    """

    def __init__(
        self,
        servicer: InferenceServicer,
        requests: AsyncIterator[ModelInferRequest | Undecodable],
        context: Context,
    ) -> None:
        self._service = servicer._service
        self._draining = servicer._draining
        self._requests = requests
        self._context = context
        self._slots = asyncio.Semaphore(servicer._max_in_flight)
        self._answers: asyncio.Queue[tuple[ModelStreamInferResponse, Failure | None] | None] = (
            asyncio.Queue()  # bounded by the slots
        )
        self._pending: set[asyncio.Future[Any]] = set()
        self._outstanding = 0  # requests read whose answers are not written yet
        self._read_all = False
        self._in_read = False
        self._reader: asyncio.Task[None] | None = None
        metadata = context.invocation_metadata() or ()
        self._metadata = metadata  # each request continues the trace the call's metadata names
        # Triton's switch: errors end the stream with their status instead of error_message.
        self._errors_as_status = any(
            key == "triton_grpc_error" and value == "true" for key, value in metadata
        )

    async def run(self) -> AsyncIterator[ModelStreamInferResponse]:
        self._reader = reader = asyncio.create_task(self._read())
        # Read its outcome even when the stream ends first (asyncio logs one nobody read).
        reader.add_done_callback(lambda done: done.cancelled() or done.exception())
        drain = asyncio.ensure_future(self._draining.wait())
        drain.add_done_callback(self._drain_begun)
        try:
            while (item := await self._answers.get()) is not None:
                answer, failure = item
                if failure is not None and self._errors_as_status:
                    await abort(self._context, failure)
                yield answer
                self._outstanding -= 1
                self._slots.release()
                if self._read_all and not self._outstanding:
                    break
            await reader  # surfaces a reader's failure
            if self._draining.is_set():
                await self._context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down: every request this stream sent before it "
                    "was answered",
                )
        finally:
            # The client went away (or the stream failed): drop the work that has not run.
            drain.cancel()
            reader.cancel()
            for future in list(self._pending):
                future.cancel()

    def _drain_begun(self, drain: asyncio.Future[Any]) -> None:
        # Waiting for a request that may never come: stop. (One being started goes on.)
        if not drain.cancelled() and self._in_read and self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        """Start each request until the client half-closes, or the server drains."""
        iterator = aiter(self._requests)
        try:
            while not self._draining.is_set():
                await self._slots.acquire()
                if self._draining.is_set():  # began while reading waited for a slot
                    break
                self._in_read = True
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if self._draining.is_set():
                        break  # cancelled by _drain_begun: nothing was read
                    raise
                finally:
                    self._in_read = False
                self._outstanding += 1
                self._start(request)
        finally:
            self._read_all = True
            if not self._outstanding:
                self._answers.put_nowait(None)

    def _start(self, request: ModelInferRequest | Undecodable) -> None:
        """Decode and queue one request; its future's callback answers it."""
        call = self._service.begin(STREAM_PROTOCOL, self._metadata)
        if type(request) is Undecodable:
            self._fail(None, None, InvalidInput(request.message), call)
            return
        assert isinstance(request, ModelInferRequest)
        service = self._service
        handle: ModelHandle | None = None
        try:
            handle = service.resolve(request.model_name, request.model_version or None)
            future, outputs = submit(service, handle, request, self._context.time_remaining(), call)
        except Exception as error:
            self._fail(request, handle, error, call)
            return
        self._pending.add(future)
        future.add_done_callback(lambda done: self._finished(done, request, handle, outputs, call))

    def _finished(
        self,
        future: asyncio.Future[Any],
        request: ModelInferRequest,
        handle: ModelHandle,
        outputs: list[str] | None,
        call: Call,
    ) -> None:
        self._pending.discard(future)
        if future.cancelled():  # the stream ended first: nobody is left to answer
            self._service.observe(call, handle, "CANCELLED")
            return
        error = future.exception()
        if error is not None:
            self._fail(request, handle, error, call)
            return
        try:
            response = answer(handle, request, future.result(), outputs)
        except Exception as bug:  # still one answer, and a log line
            self._fail(request, handle, bug, call)
            return
        self._service.observe(call, handle, "OK")
        self._answers.put_nowait((ModelStreamInferResponse(infer_response=response), None))

    def _fail(
        self,
        request: ModelInferRequest | None,
        handle: ModelHandle | None,
        error: BaseException,
        call: Call,
    ) -> None:
        model = request.model_name if request is not None else "?"
        failure = InferenceServicer._failure(error, model, None)
        self._service.observe(call, handle, failure.grpc_code)
        answer = ModelStreamInferResponse(error_message=failure.message)
        if request is not None:
            answer.infer_response.id = request.id
            answer.infer_response.model_name = request.model_name
            answer.infer_response.model_version = request.model_version
        self._answers.put_nowait((answer, failure))
