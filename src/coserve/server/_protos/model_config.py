"""Triton's ``ModelConfig`` as protocol buffer messages, for the gRPC ``ModelConfig`` RPC.

The messages are built at import from coserve's own schema of ``config.pbtxt``
(``coserve.models._textproto_schemas.TRITON_MODEL_CONFIG``, which tests check field by field,
numbers included, against Triton's published ``model_config.proto``), so there is one
definition of the config for the text reader and for the wire. They load into the private
`POOL`, in a package of their own; only the field numbers and types reach the wire, so
tritonclient reads them as its own ``inference.ModelConfig``.

``ModelConfigRequest`` (``name`` 1, ``version`` 2) and ``ModelConfigResponse`` (``config`` 1)
are those of Triton's ``grpc_service.proto``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, message_factory

from coserve.models._textproto import EnumSchema, FieldSchema, MessageSchema
from coserve.models._textproto_schemas import TRITON_MODEL_CONFIG
from coserve.server._protos._pool import POOL

__all__ = ["ModelConfig", "ModelConfigRequest", "ModelConfigResponse"]

_PACKAGE = "coserve.triton"
_FIELD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _FIELD.TYPE_STRING,
    "bytes": _FIELD.TYPE_BYTES,
    "bool": _FIELD.TYPE_BOOL,
    "int32": _FIELD.TYPE_INT32,
    "int64": _FIELD.TYPE_INT64,
    "uint32": _FIELD.TYPE_UINT32,
    "uint64": _FIELD.TYPE_UINT64,
    "float": _FIELD.TYPE_FLOAT,
    "double": _FIELD.TYPE_DOUBLE,
}


def _local(full_name: str) -> str:
    """``inference.ModelSequenceBatching.Control`` -> ``ModelSequenceBatching_Control``."""
    return full_name.partition(".")[2].replace(".", "_")


def _reference(full_name: str) -> str:
    return f".{_PACKAGE}.{_local(full_name)}"


class _Builder:
    """Every message and enum reachable from a schema, as one proto3 file."""

    def __init__(self) -> None:
        self.file = descriptor_pb2.FileDescriptorProto(
            name="coserve/triton_model_config.proto", package=_PACKAGE, syntax="proto3"
        )
        self._done: set[str] = set()

    def message(self, schema: MessageSchema) -> None:
        if schema.name in self._done:
            return
        self._done.add(schema.name)
        message = self.file.message_type.add(name=_local(schema.name))
        oneofs: list[str] = []
        for spec in schema.fields.values():
            if spec.number <= 0:
                raise RuntimeError(f"{schema.name}.{spec.name} has no field number")
            field = message.field.add(name=spec.name, number=spec.number)
            field.label = _FIELD.LABEL_REPEATED if spec.repeated else _FIELD.LABEL_OPTIONAL
            if spec.oneof is not None:
                if spec.oneof not in oneofs:
                    oneofs.append(spec.oneof)
                    message.oneof_decl.add(name=spec.oneof)
                field.oneof_index = oneofs.index(spec.oneof)
            if spec.kind == "map":
                self._map(message, field, spec)
            else:
                self._type(field, spec)

    def _map(
        self,
        message: descriptor_pb2.DescriptorProto,
        field: descriptor_pb2.FieldDescriptorProto,
        spec: FieldSchema,
    ) -> None:
        assert spec.message is not None
        entry_name = "".join(part.title() for part in spec.name.split("_")) + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        for part in spec.message.fields.values():
            inner = entry.field.add(name=part.name, number=part.number)
            inner.label = _FIELD.LABEL_OPTIONAL
            self._type(inner, part)
        field.type = _FIELD.TYPE_MESSAGE
        field.type_name = f".{_PACKAGE}.{message.name}.{entry_name}"

    def _type(self, field: descriptor_pb2.FieldDescriptorProto, spec: FieldSchema) -> None:
        if spec.enum is not None:
            field.type = _FIELD.TYPE_ENUM
            field.type_name = _reference(spec.enum.name)
            self._enum(spec.enum)
        elif spec.message is not None:
            field.type = _FIELD.TYPE_MESSAGE
            field.type_name = _reference(spec.message.name)
            self.message(spec.message)
        else:
            field.type = _SCALARS[spec.kind]

    def _enum(self, schema: EnumSchema) -> None:
        if schema.name in self._done:
            return
        self._done.add(schema.name)
        enum = self.file.enum_type.add(name=_local(schema.name))
        for name, number in schema.values.items():
            enum.value.add(name=name, number=number)


def _build() -> tuple[Any, Any, Any]:
    builder = _Builder()
    builder.message(TRITON_MODEL_CONFIG)
    request = builder.file.message_type.add(name="ModelConfigRequest")
    for number, name in enumerate(("name", "version"), start=1):
        request.field.add(name=name, number=number, type=_FIELD.TYPE_STRING)
    response = builder.file.message_type.add(name="ModelConfigResponse")
    response.field.add(
        name="config",
        number=1,
        type=_FIELD.TYPE_MESSAGE,
        type_name=_reference(TRITON_MODEL_CONFIG.name),
    )
    POOL.Add(builder.file)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in ("ModelConfig", "ModelConfigRequest", "ModelConfigResponse")
    )


ModelConfig, ModelConfigRequest, ModelConfigResponse = _build()
"""``inference.ModelConfig`` and the RPC's request and response, as message classes."""
