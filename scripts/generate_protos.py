"""Generate coserve's protocol buffer modules from the ``.proto`` files of its gRPC protocols.

Reads ``src/coserve/server/_protos/*.proto`` and writes, next to each, the ``*_pb2.py``
module and its ``*_pb2.pyi`` type stub, both committed. No ``*_pb2_grpc.py``: the servers
register their handlers with ``grpc.method_handlers_generic_handler``.

The tool version is pinned, because the protobuf runtime refuses gencode newer than itself
(``ValidateProtobufRuntimeVersion``): grpcio-tools 1.74.0 bundles protoc 31.1, whose
gencode (6.31.1) loads on every protobuf runtime coserve supports, 6.31.1 (TensorFlow
2.21's floor) through 7.x. Install it in a throwaway virtual environment, not in the
project's, and run this script with that environment's Python, from anywhere::

    python3 -m venv /tmp/protovenv
    /tmp/protovenv/bin/pip install grpcio-tools==1.74.0
    /tmp/protovenv/bin/python scripts/generate_protos.py

``--check`` regenerates into memory and fails if the committed files differ.

The generated code is rewritten to load into coserve's private descriptor pool
(``coserve.server._protos._pool``), not protobuf's default one: TensorFlow, tritonclient
and tensorflow-serving-api register the same message names there, and the default pool
refuses a second definition of a name. In the ``*_pb2.py`` files the rewrite

* adds the file to ``_pool.POOL`` instead of ``descriptor_pool.Default()``;
* imports ``_pool`` (which holds ``google/protobuf/any.proto`` and ``wrappers.proto``)
  instead of ``google.protobuf.any_pb2`` and ``wrappers_pb2``;
* builds the classes with ``_pool.build_messages``, which does not register them in the
  default symbol database (with the pure-Python backend that puts them in the default
  pool);

and in the ``*_pb2.pyi`` stubs it points the well-known types at ``_pool`` as well and
gives the bare ``Mapping`` of message initializers its type arguments (mypy strict).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS_VERSION = "1.74.0"
PROTOC_VERSION = "libprotoc 31.1"
GENCODE_VERSION = "6.31.1"

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOT = ROOT / "src"
PACKAGE = "coserve/server/_protos"
PACKAGE_MODULE = "coserve.server._protos"

HEADER_NOTE = (
    "# Post-processed by scripts/generate_protos.py: loads into coserve's private\n"
    "# descriptor pool (coserve.server._protos._pool), not protobuf's default pool.\n"
)


def main(argv: list[str] | None = None) -> int:
    """Regenerates the modules, or with ``--check`` compares them with the committed ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed files are not up to date"
    )
    args = parser.parse_args(argv)

    check_tools()
    generated = generate()
    stale = []
    for relative, text in sorted(generated.items()):
        target = SOURCE_ROOT / relative
        current = target.read_text() if target.exists() else ""
        if current == text:
            continue
        stale.append(relative)
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"a/src/{relative}",
                    f"b/src/{relative}",
                )
            )
        else:
            target.write_text(text)
            print(f"wrote src/{relative}")
    if args.check and stale:
        print(f"{len(stale)} generated file(s) out of date; run scripts/generate_protos.py")
        return 1
    if not stale:
        print("generated files up to date")
    return 0


def check_tools() -> None:
    """Refuses any grpcio-tools but the pinned one, whose protoc makes the pinned gencode."""
    try:
        version = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"needs grpcio-tools=={TOOLS_VERSION} (see this script's docstring)")
    if version != TOOLS_VERSION:
        sys.exit(
            f"needs grpcio-tools=={TOOLS_VERSION}, found {version}: a newer protoc makes "
            "gencode that older protobuf runtimes refuse (see this script's docstring)"
        )
    protoc = run_protoc(["--version"]).strip()
    if protoc != PROTOC_VERSION:
        sys.exit(f"grpcio-tools {version} runs {protoc!r}, expected {PROTOC_VERSION!r}")


def run_protoc(arguments: list[str]) -> str:
    """Runs grpcio-tools' protoc with ``arguments``; exits on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")
    return result.stdout


def generate() -> dict[str, str]:
    """The post-processed ``*_pb2.py`` and ``*_pb2.pyi`` texts, by path below ``src``."""
    import grpc_tools  # only in the throwaway environment

    well_known_include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted((SOURCE_ROOT / PACKAGE).glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files in src/{PACKAGE}")
    with tempfile.TemporaryDirectory() as out:
        run_protoc(
            [
                f"--proto_path={SOURCE_ROOT}",
                f"--proto_path={well_known_include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                *(str(proto.relative_to(SOURCE_ROOT)) for proto in protos),
            ]
        )
        generated = {}
        for path in sorted(Path(out).rglob("*_pb2.py*")):
            relative = path.relative_to(out).as_posix()
            text = path.read_text()
            if relative.endswith(".py"):
                generated[relative] = rewrite_module(text, relative)
            else:
                generated[relative] = rewrite_stub(text, relative)
    return generated


def replace_once(text: str, old: str, new: str, where: str) -> str:
    """``text`` with the single occurrence of ``old`` replaced; exits if there is not one."""
    count = text.count(old)
    if count != 1:
        sys.exit(f"{where}: expected {old!r} once, found it {count} times; protoc changed?")
    return text.replace(old, new)


def rewrite_module(text: str, where: str) -> str:
    """Points a generated ``*_pb2.py`` at the private pool (see the docstring)."""
    if f"# Protobuf Python Version: {GENCODE_VERSION}\n" not in text:
        sys.exit(f"{where}: not gencode {GENCODE_VERSION}")
    text = replace_once(text, "# NO CHECKED-IN PROTOBUF GENCODE\n", HEADER_NOTE, where)
    well_known = re.compile(r"^from google\.protobuf import (any|wrappers)_pb2 as \w+\n", re.M)
    text = well_known.sub("", text)
    text = replace_once(
        text,
        "\n\nDESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        f"\nfrom {PACKAGE_MODULE} import _pool\n\nDESCRIPTOR = _pool.POOL.AddSerializedFile(",
        where,
    )
    text = re.sub(
        r"^_builder\.BuildTopDescriptorsAndMessages\((DESCRIPTOR, '[\w.]+', _globals)\)$",
        r"_pool.build_messages(\1)",
        text,
        count=1,
        flags=re.M,
    )
    if "_pool.build_messages(" not in text or "_descriptor_pool.Default()" in text:
        sys.exit(f"{where}: unexpected generated code; protoc changed?")
    return text


def rewrite_stub(text: str, where: str) -> str:
    """Points a generated ``*_pb2.pyi`` at the private pool's well-known types."""
    header = (
        "# Generated by the protocol buffer compiler (grpcio-tools "
        f"{TOOLS_VERSION}).  DO NOT EDIT!\n"
        f"# source: {where.removesuffix('_pb2.pyi')}.proto\n" + HEADER_NOTE + "\n"
    )
    text = re.sub(
        r"^from google\.protobuf import (any|wrappers)_pb2 as (\w+)$",
        rf"from {PACKAGE_MODULE} import _pool as \2",
        text,
        flags=re.M,
    )
    if "_Mapping" in text:
        text = replace_once(
            text,
            "from typing import ",
            "from typing import Any as _Any, ",
            where,
        )
        bare = re.compile(r"\b_Mapping\b(?!\[)")
        text = "".join(
            line if line.startswith("from ") else bare.sub("_Mapping[str, _Any]", line)
            for line in text.splitlines(keepends=True)
        )
    return header + text


if __name__ == "__main__":
    sys.exit(main())
