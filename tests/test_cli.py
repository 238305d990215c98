"""The coserve command line: help, and the option parsing users type."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from coserve.cli import parse_size


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_the_command_and_every_serve_option() -> None:
    """Coserve --help names serve; serve --help documents every option and the shutdown contract."""
    top = run_cli("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    for option in (
        "--model-repository",
        "--host",
        "--port",
        "--max-request-size",
        "--graceful-timeout",
        "--log-level",
    ):
        assert option in serve.stdout
    assert "exits 0" in " ".join(serve.stdout.split())


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 * 2**20), ("10MB", 10**7), ("1048576", 1048576), ("512B", 512), ("1.5KiB", 1536)],
)
def test_sizes_are_parsed_with_units(text: str, size: int) -> None:
    """--max-request-size takes plain bytes or decimal and binary units."""
    assert parse_size(text) == size


def test_a_bad_size_is_refused_with_an_example() -> None:
    """An unparsable size is a usage error that shows what a size looks like."""
    with pytest.raises(argparse.ArgumentTypeError, match="64MiB"):
        parse_size("lots")
    result = run_cli("serve", "--max-request-size", "lots")
    assert result.returncode == 2
    assert "is not a size" in result.stderr


def test_a_missing_repository_fails_to_start_with_a_clear_error() -> None:
    """Pointing at a folder that does not exist stops the server with a non-zero status."""
    result = run_cli("serve", "--model-repository", "/nonexistent/models", "--port", "0")
    assert result.returncode != 0
    assert "is not a folder" in result.stdout + result.stderr


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_graceful_timeout_must_be_a_finite_non_negative_number(value: str) -> None:
    """--graceful-timeout refuses negative, infinite and non-numeric values up front."""
    result = run_cli("serve", "--graceful-timeout", value)
    assert result.returncode == 2
    assert "seconds" in result.stderr


def serve_without_grpc_installed(*args: str) -> subprocess.CompletedProcess[str]:
    """``coserve serve`` in a process where ``import grpc`` fails, as without the extra."""
    code = (
        "import sys; sys.modules['grpc'] = None; from coserve.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_the_grpc_extra_an_asked_for_grpc_port_is_an_error() -> None:
    """--grpc-port given, gRPC not installed: exit 2, naming the extra and --no-grpc."""
    result = serve_without_grpc_installed("--grpc-port", "0")
    assert result.returncode == 2
    assert "coserve[grpc]" in result.stderr
    assert "--no-grpc" in result.stderr


def test_without_the_grpc_extra_the_default_serves_http_only_with_a_warning() -> None:
    """No --grpc-port, gRPC not installed: a warning, then the server starts as HTTP only.

    (It then stops on the missing repository, which shows it went on to start.)
    """
    result = serve_without_grpc_installed("--model-repository", "/nonexistent/models")
    output = result.stdout + result.stderr
    assert "serving HTTP only: gRPC needs coserve[grpc]" in output
    assert "is not a folder" in output


def test_tfserving_help_takes_tf_servings_flags_as_it_spells_them() -> None:
    """The tfserving command's --help documents TF Serving's flags, spelled with underscores."""
    result = run_cli("tfserving", "--help")
    assert result.returncode == 0
    for flag in (
        "--port",
        "--rest_api_port",
        "--model_name",
        "--model_base_path",
        "--model_config_file",
        "--model_config_file_poll_wait_seconds",
        "--file_system_poll_wait_seconds",
        "--enable_batching",
        "--batching_parameters_file",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_base_path=/m", "--batching_parameters_file=/b"], "needs --enable_batching"),
        (["--rest_api_port=0"], "give --model_base_path"),
        (["--model_base_path=/nonexistent/model"], "is not a folder"),
        (["--model_base_path=/m", "--no_such_flag=1"], "unrecognized arguments"),
    ],
)
def test_tfserving_refuses_what_tf_serving_refuses(args: list[str], message: str) -> None:
    """Flag mistakes stop coserve tfserving with status 2 and a message saying which."""
    result = run_cli("tfserving", "--port=0", *args)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr


def test_serve_model_name_needs_a_model_base_path() -> None:
    """--model-name names --model-base-path's model: alone it is a usage error."""
    result = run_cli("serve", "--model-name", "m")
    assert result.returncode == 2
    assert "--model-name needs --model-base-path" in result.stderr


def test_tfserving_flags_it_does_not_apply_are_named_in_any_spelling() -> None:
    """Bare, =value and --no forms of TF Serving's other flags parse, each one warned."""
    result = run_cli(
        "tfserving",
        "--port=0",
        "--enable_model_warmup",
        "--noflush_filesystem_caches",
        "--tensorflow_intra_op_parallelism=2",
        "--model_base_path=/nonexistent/model",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "is not a folder" in output  # got as far as the model path
    for flag in (
        "enable_model_warmup",
        "flush_filesystem_caches",
        "tensorflow_intra_op_parallelism",
    ):
        assert f"--{flag} is TensorFlow Serving's; coserve does not apply it" in output


def test_tritons_http_port_spelling_sets_the_http_port() -> None:
    from coserve.cli import _parser

    assert _parser().parse_args(["serve", "--http-port", "9123"]).port == 9123
    assert _parser().parse_args(["serve", "--port", "9124"]).port == 9124
