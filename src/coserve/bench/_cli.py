"""``coserve bench``: load a model on a running server and report what it can do.

Exit status: 0 when every step ran as asked; 1 when the target cannot be reached or the input
is wrong (2 for bad flags); 3 when ``--compare`` finds a regression; 4 when an open-loop step's
offered rate was not achieved; 5 when ``--strict`` and a step never became stable; 6 when
``--find-max`` found no rate meeting the SLO.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coserve._exceptions import CoserveError
from coserve.batching._target import LatencyTarget, parse_duration, parse_targets

__all__ = [
    "add_input_arguments",
    "add_target_arguments",
    "build_bodies",
    "main",
    "parse_range",
]

_DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_ERROR = 1
EXIT_REGRESSION = 3
EXIT_RATE_MISSED = 4
EXIT_UNSTABLE = 5
EXIT_NO_RATE = 6


def parse_range(text: str, *, whole: bool) -> list[float]:
    """``16``, ``1,2,8``, ``1:256:x2`` (doubling) or ``100:1000:100`` (adding).

    A range always ends at its end (``1:20:x4`` is 1, 4, 16, 20); ``A:B`` doubles.

    Raises:
        argparse.ArgumentTypeError: Not a number, list or range.
    """
    try:
        if "," in text:
            values = [float(part) for part in text.split(",")]
        elif ":" in text:
            parts = text.split(":")
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = float(parts[0]), float(parts[1])
            step = parts[2] if len(parts) == 3 else "x2"
            if start <= 0 or stop < start:
                raise ValueError
            values = []
            value = start
            if step.startswith("x"):
                factor = float(step[1:])
                if factor <= 1:
                    raise ValueError
                while value <= stop * (1 + 1e-9):
                    values.append(value)
                    value *= factor
            else:
                add = float(step)
                if add <= 0:
                    raise ValueError
                while value <= stop * (1 + 1e-9):
                    values.append(value)
                    value += add
            if values[-1] < stop * (1 - 1e-9):
                values.append(stop)  # the end is always measured
            if len(values) > 1000:
                raise ValueError
        else:
            values = [float(text)]
        if not values or any(v <= 0 or not math.isfinite(v) for v in values):
            raise ValueError
        if whole and any(v != int(v) for v in values):
            raise ValueError
    except ValueError:
        example = "1:256:x2, 1,4,16 or 32" if whole else "100:1000:100, 100:1600:x2 or 500"
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a value or range such as {example}"
        ) from None
    return values


def _duration(text: str) -> float:
    try:
        return parse_duration(text if re.search(r"[a-zµ]", text) else f"{text}s")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _targets(text: str) -> tuple[LatencyTarget, ...]:
    try:
        return parse_targets(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _percent(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 10%")
    return float(match.group(1)) / 100


def _value_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    try:
        pair = (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW:HIGH") from None
    if not pair[0] < pair[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW must be below HIGH")
    return pair


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """TARGET, ``--url``, ``--protocol``, ``--grpc-address``, ``--model-version`` (bench, tune)."""
    p.add_argument(
        "target",
        metavar="TARGET",
        help="a model name (on --url), or a URL naming it: http://HOST:PORT/v2/models/M"
        "[/versions/V], http://HOST:PORT/v1/models/M (TF Serving REST), "
        "ws://HOST:PORT/v2/models/M (WebSocket streaming), grpc://HOST:PORT/M",
    )
    p.add_argument(
        "--url",
        default=None,
        help=f"server for a bare model name, and the HTTP side of a grpc:// one (metadata, "
        f"/metrics) (default: {_DEFAULT_URL}, or http://HOST:8000)",
    )
    p.add_argument(
        "--protocol",
        choices=["v2", "v2-binary", "tfserving", "ws", "grpc", "grpc-stream"],
        default=None,
        help="how requests are sent (default: from TARGET; v2 is Open Inference Protocol JSON, "
        "v2-binary its binary-data extension, grpc-stream Triton's ModelStreamInfer)",
    )
    p.add_argument(
        "--grpc-address", default=None, metavar="HOST:PORT", help="gRPC (default: HOST:8001)"
    )
    p.add_argument("--model-version", default=None, metavar="V")


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The ``inputs`` group: ``--batch-size``, ``--shape``, ``--input-data``, ``--data-range``."""
    data = p.add_argument_group("inputs")
    data.add_argument("--batch-size", type=int, default=1, metavar="ROWS", help="rows per request")
    data.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="shape of an input with variable dimensions: tokens:1,32, or tokens:1,8..64 for a "
        "length drawn per request (repeatable)",
    )
    data.add_argument(
        "--input-data",
        type=Path,
        default=None,
        metavar="FILE",
        help="real inputs: .npy (one input), .npz (by name) or JSON lines (a V2 body, or "
        "name → nested list, per line)",
    )
    data.add_argument(
        "--data-range", type=_value_range, default=None, metavar="LOW:HIGH", help="random values"
    )


def parser() -> argparse.ArgumentParser:
    """The ``coserve bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="coserve bench",
        description=(
            "Load a model on a running server and measure it: closed loop over a range of "
            "concurrencies (-c), open loop at a rate or a range of rates (--rate) with latency "
            "from each request's intended send time (no coordinated omission), a load profile "
            "(--profile ramp|step|spike), or the highest rate that meets an SLO (--find-max "
            "--slo 'p99<20ms'). Each step is measured in windows until three agree within "
            "--stability; the server's batch sizes, queue and execution times for the same "
            "windows are read from its /metrics."
        ),
        epilog=(
            "exit status: 0 done; 1 target or input error; 2 bad flags; 3 --compare found a "
            "regression; 4 an offered rate was not achieved; 5 --strict and a step was "
            "unstable; 6 --find-max found no rate meeting the SLO"
        ),
    )
    add_target_arguments(p)
    load = p.add_argument_group("load")
    load.add_argument(
        "-c",
        "--concurrency",
        type=lambda t: parse_range(t, whole=True),
        default=None,
        metavar="RANGE",
        help="closed loop: requests in flight, e.g. 16, 1,4,16 or 1:256:x2 (default: 1:64:x2)",
    )
    load.add_argument(
        "--rate",
        type=lambda t: parse_range(t, whole=False),
        default=None,
        metavar="RANGE",
        help="open loop: requests per second, e.g. 500 or 100:1000:100 (with --profile: "
        "LOW:HIGH[:STEP])",
    )
    load.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    load.add_argument(
        "--profile",
        choices=["ramp", "step", "spike"],
        default=None,
        help="open loop over --duration: ramp LOW→HIGH; step LOW, LOW+STEP, … HIGH; spike: "
        "LOW, with HIGH for --spike-length at --spike-at",
    )
    load.add_argument("--duration", type=_duration, default=20.0, metavar="TIME")
    load.add_argument("--spike-at", type=_duration, default=None, metavar="TIME")
    load.add_argument("--spike-length", type=_duration, default=1.0, metavar="TIME")
    load.add_argument(
        "--find-max",
        action="store_true",
        help="search for the highest rate that meets --slo with no errors (goodput)",
    )
    load.add_argument(
        "--slo",
        type=_targets,
        default=(),
        metavar="TARGETS",
        help="latency targets, e.g. 'p99<20ms' or 'p50<5ms,p99<20ms': goodput is reported "
        "against the first",
    )
    load.add_argument("--procs", type=int, default=1, help="load processes (default: 1)")
    load.add_argument(
        "--cpus", default="", metavar="LIST", help="pin the load processes to these CPUs: 0,1"
    )
    load.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="open loop: connections at most (requests due beyond them wait, and their wait "
        "counts); a closed loop has one per slot (default: %(default)s)",
    )
    load.add_argument("--timeout", type=_duration, default=30.0, metavar="TIME")
    add_input_arguments(p)
    measure = p.add_argument_group("measurement")
    measure.add_argument("--window", type=_duration, default=None, metavar="TIME")
    measure.add_argument("--warmup", type=_duration, default=2.0, metavar="TIME")
    measure.add_argument("--max-windows", type=int, default=10, metavar="N")
    measure.add_argument(
        "--stability", type=_percent, default=0.10, metavar="PCT", help="default: 10%%"
    )
    measure.add_argument("--strict", action="store_true", help="fail (5) on an unstable step")
    measure.add_argument("--metrics-url", default=None, help="default: URL/metrics")
    measure.add_argument("--no-server-stats", action="store_true")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, metavar="FILE")
    out.add_argument("--csv", type=Path, default=None, metavar="FILE")
    out.add_argument("--plot", type=Path, default=None, metavar="FILE.png|FILE.html")
    out.add_argument("--no-terminal-plot", action="store_true")
    out.add_argument("--compare", type=Path, default=None, metavar="BASELINE.json")
    out.add_argument("--threshold", type=_percent, default=0.10, metavar="PCT")
    out.add_argument("--quiet", action="store_true", help="only the final table")
    return p


_URL = re.compile(
    r"(?P<scheme>https?|wss?|grpc)://(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?"
    r"(?P<path>/.*)?"
)


def resolve_target(args: argparse.Namespace) -> Any:
    """The :class:`Target` that TARGET and the flags name."""
    from coserve.bench._payload import Target

    text = args.target
    version = args.model_version
    match = _URL.fullmatch(text)
    if match is None:
        if "/" in text or ":" in text:
            raise CoserveError(f"{text!r} is neither a model name nor a URL naming a model")
        base, model, protocol = (args.url or _DEFAULT_URL).rstrip("/"), text, "v2"
        base_match = _URL.fullmatch(base)
        if base_match is None:
            raise CoserveError(f"--url {base!r} is not http://HOST:PORT")
        host = base_match.group("host")
    else:
        scheme, host = match.group("scheme"), match.group("host")
        path = (match.group("path") or "").rstrip("/")
        port = match.group("port")
        if scheme == "grpc":
            model = path.strip("/")
            if not model:
                raise CoserveError(f"{text!r}: name the model, grpc://HOST:PORT/MODEL")
            # Metadata and /metrics come from the same host's HTTP port unless --url says.
            base = (args.url or f"http://{host}:8000").rstrip("/")
            grpc_address = f"{host}:{port or 8001}"
            return Target(base, model, version, args.protocol or "grpc", grpc_address)
        web = "https" if scheme in ("https", "wss") else "http"
        base = f"{web}://{host}:{port or (443 if web == 'https' else 80)}"
        found = re.fullmatch(
            r"/v(?P<api>[12])/models/(?P<m>[^/:]+)(?:/versions/(?P<v>[^/:]+))?"
            r"(?:/infer(?:/ws)?|:predict)?",
            path,
        )
        if found is None:
            raise CoserveError(
                f"{text!r}: the path should be /v2/models/MODEL[/versions/V] or /v1/models/MODEL"
            )
        model = found.group("m")
        version = version or found.group("v")
        protocol = "ws" if scheme.startswith("ws") else "tfserving" if found["api"] == "1" else "v2"
    grpc_address = args.grpc_address or f"{host.strip('[]')}:8001"
    return Target(base, model, version, args.protocol or protocol, grpc_address)


def build_bodies(args: argparse.Namespace, target: Any) -> list[Any]:
    """The encoded requests the input flags ask for, from the target's metadata.

    Raises:
        CoserveError: The metadata cannot be read, or the inputs are wrong.
    """
    from coserve.bench._payload import (
        encode_bodies,
        fetch_input_specs,
        load_input_file,
        parse_shapes,
        random_inputs,
    )

    specs = fetch_input_specs(target)
    if args.input_data is not None:
        variants = load_input_file(args.input_data, specs, args.batch_size)
    else:
        try:
            shapes = parse_shapes(args.shape)
        except ValueError as error:
            raise CoserveError(str(error)) from None
        variants = random_inputs(
            specs, rows=args.batch_size, shapes=shapes, value_range=args.data_range
        )
    return list(encode_bodies(target, variants))


def _profile_points(args: argparse.Namespace) -> tuple[tuple[float, float], ...]:
    rates = args.rate or []
    if len(rates) < 2:
        raise CoserveError("--profile needs --rate LOW:HIGH (and :STEP for step)")
    low, high, duration = rates[0], rates[-1], args.duration
    if args.profile == "ramp":
        return ((0.0, low), (duration, high))
    if args.profile == "step":
        points: list[tuple[float, float]] = []
        hold = duration / len(rates)
        for i, rate in enumerate(rates):
            points += [(i * hold, rate), ((i + 1) * hold - 1e-6, rate)]
        return tuple(points)
    at = args.spike_at if args.spike_at is not None else duration / 3
    end = at + args.spike_length
    if end > duration:
        raise CoserveError("the spike must end within --duration")
    return ((0.0, low), (at - 1e-6, low), (at, high), (end - 1e-6, high), (end, low))


class _Live:
    """The live view: progress bars redrawn in place on a terminal, else a line per window."""

    def __init__(self, quiet: bool, console: Any, steps: int | None, windows: int) -> None:
        self.quiet = quiet
        self.console = console
        self._windows = windows
        self._progress: Any = None
        self._task: Any = None
        self._overall: Any = None
        self._label = ""
        if not quiet and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description:>16}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
            )
            self._overall = self._progress.add_task("steps", total=steps, status="")

    def __enter__(self) -> _Live:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def window(self, step: Any, windows: Sequence[Any], stable: bool | None) -> None:
        """After each window of a step."""
        if self.quiet:
            return
        from coserve.bench._runner import latency_summary

        last = windows[-1]
        p99 = latency_summary(last.latency).get("p99", float("nan"))
        state = {True: "[green]stable[/]", False: "[yellow]settling[/]", None: ""}[stable]
        status = (
            f"{last.throughput:9.0f} ok/s  mean {last.mean_ms:7.2f} ms  p99 {p99:7.2f} ms  "
            f"errors {sum(last.errors.values())}  {state}"
        )
        if self._progress is None:
            self.console.print(f"  {step.label:>14}  window {len(windows):>2}  {status}")
            return
        if self._label != step.label or self._task is None:
            self._label = step.label
            self._task = self._progress.add_task(step.label, total=self._windows, status="")
        done = self._windows if stable else len(windows)
        self._progress.update(self._task, completed=done, status=status)

    def step_done(self) -> None:
        """After each step."""
        if self._progress is not None:
            self._progress.advance(self._overall)
            self._task = None


def _run_steps(runner: Any, steps: Sequence[Any], policy: Any, live: _Live) -> list[Any]:
    results = []
    for step in steps:
        results.append(runner.run(step, policy, live.window))
        live.step_done()
    return results


def _find_max(
    runner: Any,
    args: argparse.Namespace,
    policy: Any,
    live: _Live,
) -> tuple[list[Any], Any | None]:
    """A closed-loop probe for capacity, then a binary search over rates for the SLO."""
    from coserve.bench._runner import Step

    console = live.console
    probe = runner.run(
        Step("closed", concurrency=64, max_connections=args.max_connections), policy, live.window
    )
    capacity = probe.throughput
    if capacity <= 0:
        return [probe], None
    console.print(
        f"capacity at c=64: {capacity:.0f}/s; searching rates up to {1.1 * capacity:.0f}/s"
    )
    low, high = 0.0, 1.1 * capacity
    best = None
    tried = [probe]
    while high - low > 0.03 * high and high >= 2 and len(tried) < 12:
        rate = float(max(1, round((low + high) / 2)))
        result = runner.run(
            Step("open", rate=rate, arrival=args.arrival, max_connections=args.max_connections),
            policy,
            live.window,
        )
        tried.append(result)
        live.step_done()
        ok = result.meets(args.slo)
        console.print(
            f"  rate {rate:.0f}/s: {'meets' if ok else 'misses'} {', '.join(map(str, args.slo))}"
        )
        if ok:
            low, best = rate, result
        else:
            high = rate
    return tried, best


def consoles() -> tuple[Any, Any]:
    """The rich consoles for results and for errors (wide when not a terminal)."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # a log or a pipe: keep the table's columns whole
        console = Console(highlight=False, width=200)
    errors = Console(stderr=True, highlight=False, width=None if console.is_terminal else 200)
    return console, errors


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coserve bench``; returns the exit status."""
    args = parser().parse_args(argv)
    console, errors = consoles()
    if args.find_max and not args.slo:
        errors.print("--find-max needs --slo, such as --slo 'p99<20ms'")
        return 2
    if sum(x is not None and x is not False for x in (args.concurrency, args.profile)) > 1 or (
        args.concurrency and args.rate
    ):
        errors.print("give one of -c, --rate, --profile or --find-max")
        return 2
    if args.find_max and (args.concurrency or args.rate or args.profile):
        errors.print("--find-max searches rates itself: drop -c, --rate and --profile")
        return 2
    if args.profile and (not args.rate or len(args.rate) < 2):
        errors.print("--profile needs --rate LOW:HIGH (and :STEP for step)")
        return 2
    if args.target.startswith(("https://", "wss://")):
        errors.print("coserve bench speaks plain HTTP and WebSocket (no TLS)")
        return 2
    if args.procs < 1 or args.batch_size < 1 or args.max_connections < 1:
        errors.print("--procs, --batch-size and --max-connections must be >= 1")
        return 2
    try:
        return _bench(args, console, errors)
    except CoserveError as error:
        errors.print(f"[red]coserve bench:[/] {error}", highlight=False)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _bench(args: argparse.Namespace, console: Any, errors: Any) -> int:
    from coserve.bench._report import (
        compare,
        results_table,
        server_table,
        step_record,
        terminal_plot,
        write_csv,
        write_json,
        write_plot,
    )
    from coserve.bench._runner import LoadRunner, Step, WindowPolicy

    target = resolve_target(args)
    bodies = build_bodies(args, target)
    if args.profile:
        points = _profile_points(args)
        window = args.window or 0.5
        steps = [
            Step(
                "open",
                rate_points=points,
                arrival=args.arrival,
                max_connections=args.max_connections,
            )
        ]
        policy = WindowPolicy(
            window=window, warmup=args.warmup, fixed_windows=max(1, round(args.duration / window))
        )
    else:
        policy = WindowPolicy(
            window=args.window or 2.0,
            warmup=args.warmup,
            max_windows=max(3, args.max_windows),
            tolerance=args.stability,
        )
        if args.rate and not args.find_max:
            steps = [
                Step("open", rate=r, arrival=args.arrival, max_connections=args.max_connections)
                for r in args.rate
            ]
        else:
            steps = [
                Step("closed", concurrency=int(c), max_connections=args.max_connections)
                for c in (args.concurrency or parse_range("1:64:x2", whole=True))
            ]
    metrics_url = (
        None if args.no_server_stats else (args.metrics_url or f"{target.base_url}/metrics")
    )
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()] if args.cpus else []
    live = _Live(
        args.quiet,
        console,
        None if args.find_max else len(steps),
        policy.fixed_windows or policy.max_windows,
    )
    if not args.quiet:
        what = (
            "finding the highest rate meeting " + ", ".join(map(str, args.slo))
            if args.find_max
            else f"{len(steps)} step(s)"
        )
        console.print(
            f"coserve bench: {target.model} over {target.protocol} at "
            f"{target.grpc_address if target.protocol.startswith('grpc') else target.base_url}; "
            f"{what}; {args.procs} load process(es)"
        )
    started = time.time()
    with (
        LoadRunner(
            target,
            bodies,
            processes=args.procs,
            timeout=args.timeout,
            metrics_url=metrics_url,
            cpus=cpus,
        ) as runner,
        live,
    ):
        best = None
        if args.find_max:
            results, best = _find_max(runner, args, policy, live)
        else:
            results = _run_steps(runner, steps, policy, live)
    console.print(results_table(results, args.slo))
    last = max(results, key=lambda r: r.throughput)
    table = server_table(last)
    if table is not None and not args.quiet:
        console.print(table)
    for note in dict.fromkeys(r.server_note for r in results if r.server_note):
        errors.print(f"[yellow]note:[/] {note}")
    status = 0
    for result in results:
        if result.client_busiest > 0.9:
            errors.print(
                f"[yellow]warning:[/] {result.step.label}: the busiest load process used "
                f"{result.client_busiest:.0%} of a core: the load generator, not the server, "
                "may be the limit (try --procs 2)"
            )
        if result.late_fraction > 0.01:
            errors.print(
                f"[yellow]warning:[/] {result.step.label}: {result.late_fraction:.1%} of sends "
                "left more than 1 ms after their intended time (the latency from the intended "
                "time includes that)"
            )
        if not result.rate_achieved and not args.find_max:
            errors.print(
                f"[red]offered rate not achieved:[/] {result.step.label}: "
                f"{result.throughput:.0f}/s answered with success of {result.offered:.0f}/s "
                "offered"
            )
            status = status or EXIT_RATE_MISSED
        if not result.stable and args.strict:
            errors.print(f"[red]unstable:[/] {result.step.label} (--strict)")
            status = status or EXIT_UNSTABLE
    if args.find_max:
        if best is None:
            errors.print(f"[red]no rate met {', '.join(map(str, args.slo))}[/]")
            status = status or EXIT_NO_RATE
        else:
            console.print(
                f"highest rate meeting {', '.join(map(str, args.slo))}: "
                f"[bold]{best.step.rate:.0f}/s[/] (goodput {best.goodput(args.slo[0]):.0f}/s)"
            )
    records = [step_record(result, args.slo) for result in results]
    plottable = len(results) > 1 or bool(results[0].step.rate_points)
    if plottable and not args.no_terminal_plot and not args.quiet and console.is_terminal:
        console.print(terminal_plot(results, width=min(console.width, 120)))
    title = f"{target.model} over {target.protocol}"
    if args.plot is not None:
        try:
            write_plot(args.plot, results, title)
        except ImportError:
            errors.print("--plot needs matplotlib: pip install 'coserve[plot]'")
            status = status or EXIT_ERROR
        except ValueError as error:
            errors.print(str(error))
            status = status or EXIT_ERROR
    document = {
        "tool": "coserve bench",
        "command": sys.argv,
        "started": started,
        "target": {
            "url": target.base_url,
            "model": target.model,
            "version": target.version,
            "protocol": target.protocol,
        },
        "settings": {
            "procs": args.procs,
            "batch_size": args.batch_size,
            "window_s": policy.window,
            "stability": args.stability,
            "slo": [str(t) for t in args.slo],
        },
        "steps": records,
        "find_max": (
            {"rate": best.step.rate, "goodput": best.goodput(args.slo[0])}
            if args.find_max and best is not None
            else None
        ),
    }
    if args.json is not None:
        write_json(args.json, document)
    if args.csv is not None:
        write_csv(args.csv, results)
    if args.compare is not None:
        try:
            baseline = json.loads(args.compare.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            errors.print(f"--compare {args.compare}: {error}")
            return EXIT_ERROR
        regressions, unmatched = compare(baseline, records, args.threshold)
        for label in unmatched:
            errors.print(f"[yellow]--compare:[/] no step {label} in the baseline")
        for regression in regressions:
            errors.print(f"[red]regression:[/] {regression}")
        if regressions:
            status = EXIT_REGRESSION
        elif not args.quiet:
            console.print(f"no regression beyond {args.threshold:.0%} against {args.compare}")
    return status


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
