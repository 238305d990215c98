"""The private descriptor pool that coserve's generated protocol buffer modules live in.

TensorFlow, tritonclient and tensorflow-serving-api register messages of the same full
names (``tensorflow.TensorProto``, ``inference.ModelInferRequest``, ...) in protobuf's
default pool, which refuses a second definition of a name. coserve's ``*_pb2`` modules
therefore add their files to `POOL` instead (``scripts/generate_protos.py`` rewrites the
generated code to do so), and build their classes with `build_messages`, which leaves
protobuf's default symbol database alone.

The well-known types the files import (``google/protobuf/any.proto`` and
``wrappers.proto``) are added to `POOL` first. Their classes here, `Any` and
`Int64Value`, are distinct from those of ``google.protobuf.any_pb2`` and
``wrappers_pb2``, whose descriptors live in the default pool: fields of coserve's
messages take these (``spec.version.value = 3``, ``response.metadata[key].Pack(...)``),
not the default pool's.
"""

from __future__ import annotations

import typing

from google.protobuf import any_pb2, descriptor_pool, message, message_factory, wrappers_pb2
from google.protobuf import reflection as _reflection
from google.protobuf.internal import enum_type_wrapper

__all__ = ["POOL", "Any", "Int64Value", "build_messages"]

POOL = descriptor_pool.DescriptorPool()
"""The descriptor pool of coserve's gRPC protocols, apart from protobuf's default pool."""

for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)

if typing.TYPE_CHECKING:
    # Declared apart from google.protobuf's classes (final in types-protobuf), so that
    # mypy refuses one where the other is expected, as protobuf does at run time.
    from google.protobuf.internal import well_known_types

    class Any(message.Message, well_known_types.Any):
        """``google.protobuf.Any`` in `POOL`."""

        type_url: str
        value: bytes

        def __init__(self, *, type_url: str | None = ..., value: bytes | None = ...) -> None: ...

    class Int64Value(message.Message):
        """``google.protobuf.Int64Value`` in `POOL`."""

        value: int

        def __init__(self, *, value: int | None = ...) -> None: ...

else:
    Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName("google.protobuf.Any"))
    Int64Value = message_factory.GetMessageClass(
        POOL.FindMessageTypeByName("google.protobuf.Int64Value")
    )


def build_messages(
    file_descriptor: typing.Any, module_name: str, module: dict[str, typing.Any]
) -> None:
    """Builds the top-level enums, services and message classes of a generated module.

    What ``google.protobuf.internal.builder.BuildTopDescriptorsAndMessages`` does, less
    its registration of each class in the default symbol database: with the pure-Python
    protobuf backend that registration adds the descriptor to the default pool, where
    it collides with TensorFlow's or tritonclient's of the same name.

    Args:
        file_descriptor: The ``FileDescriptor`` of the module, from `POOL`.
        module_name: The module's ``__name__``.
        module: The module's ``globals()``.
    """

    def build(descriptor: typing.Any, prefix: str) -> typing.Any:
        namespace: dict[str, typing.Any] = {
            name: build(nested, f"{prefix}{descriptor.name}.")
            for name, nested in descriptor.nested_types_by_name.items()
        }
        namespace["DESCRIPTOR"] = descriptor
        namespace["__module__"] = module_name
        namespace["__qualname__"] = prefix + descriptor.name
        return _reflection.GeneratedProtocolMessageType(
            descriptor.name, (message.Message,), namespace
        )

    for name, enum in file_descriptor.enum_types_by_name.items():
        module[f"_{name.upper()}"] = enum
        module[name] = enum_type_wrapper.EnumTypeWrapper(enum)
        for value in enum.values:
            module[value.name] = value.number
    for name, extension in file_descriptor.extensions_by_name.items():
        module[f"{name.upper()}_FIELD_NUMBER"] = extension.number
        module[name] = extension
    for name, service in file_descriptor.services_by_name.items():
        module[f"_{name.upper()}"] = service
    for name, descriptor in file_descriptor.message_types_by_name.items():
        module[name] = build(descriptor, "")
