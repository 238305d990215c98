"""``coserve tune``: find the batching options that serve the most under a latency SLO.

Like model_analyzer, without restarts: every configuration is set live through the server's
admin API (``coserve serve --admin``); only a change of ``--workers`` starts a new server.

1. **Profile**: ``max_wait=0``, the largest batch size, one slot, closed loop at a few
   concurrencies; the server's ``/metrics`` give each step's rows per batch and execution time
   per batch, and ``s(n) = c + a·n`` is fitted to them.
2. **Prune**: a batch size ``B`` with ``2·s(B)`` above the SLO (a request waits out the running
   batch, then runs in its own) is dropped, and so is a ``max_wait`` that a lone request cannot
   afford (``max_wait + s(1)`` above it).
3. **Sweep**: each configuration's closed-loop concurrency ramp (x2) ends when the SLO breaks or
   throughput plateaus (< 5% over the last ``--plateau-steps``); along each axis (``max_wait``,
   ``max_batch_size``, slots, workers) larger values stop once two in a row gain < 5%.
4. **Report**: every configuration, the Pareto front of throughput against the SLO's
   statistic, the best under the SLO, plots, and the winner as a ``[batching]`` block.
5. **Confirm**: an open-loop Poisson run at 90% of the winner's throughput, its latency from
   each request's intended send time, must meet the SLO too.

The model's options are restored at the end, on an error and on Ctrl-C.

Exit status: 0 a configuration met the SLO and was confirmed; 1 the target, the server or the
input failed (2 for bad flags); 6 no configuration met the SLO; 7 the winner's open-loop
confirmation missed it; 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coserve._exceptions import CoserveError
from coserve.batching._target import LatencyTarget
from coserve.bench._cli import (
    _duration,
    _percent,
    _targets,
    add_input_arguments,
    add_target_arguments,
    build_bodies,
    consoles,
    parse_range,
    resolve_target,
)
from coserve.bench._payload import Body, Target
from coserve.bench._tune_report import ConfigResult
from coserve.bench._tune_search import (
    LatencyModel,
    Pruning,
    RampPoint,
    TuneConfig,
    fit_latency,
    plateaued,
    prune_batch_sizes,
    ramp,
)
from coserve.bench._tune_server import TUNED_OPTIONS, AdminClient, AdminRefusedError, ManagedServer

__all__ = ["EXIT_CONFIRM_FAILED", "EXIT_NO_CONFIG", "main", "parser"]

EXIT_ERROR = 1
EXIT_NO_CONFIG = 6
EXIT_CONFIRM_FAILED = 7
DEFAULT_WAITS = (0.0, 0.0005, 0.001, 0.002, 0.005)
AXIS_STEPS = 2
"""Along an axis of the space, larger values stop once this many in a row gain < 5%."""


def _whole_list(text: str) -> list[int]:
    return [int(v) for v in parse_range(text, whole=True)]


def _waits(text: str) -> list[float]:
    return sorted({_duration(part.strip()) for part in text.split(",") if part.strip()})


def parser() -> argparse.ArgumentParser:
    """The ``coserve tune`` argument parser."""
    p = argparse.ArgumentParser(
        prog="coserve tune",
        description=(
            "Find the batching options that give a model the most throughput under a latency "
            "SLO, on a running server with the admin API (coserve serve --admin), changing "
            "them live: max_batch_size, max_wait and slots (max_concurrent_batches); with "
            "--workers and --repository it also starts `coserve serve --admin --workers N` "
            "itself, once per worker count. A profile fits each batch's execution time "
            "s(n)=c+a·n from the server's /metrics and prunes batch sizes with 2·s(B) above "
            "the SLO; each configuration's closed-loop concurrency ramp (x2) stops at the SLO "
            "or a throughput plateau. Reports every configuration, the Pareto front of "
            "throughput against the SLO's statistic, the best under the SLO as a [batching] "
            "block, and confirms it with an open-loop run at 90%% of its throughput. The "
            "model's options are restored at the end."
        ),
        epilog=(
            "exit status: 0 a configuration met the SLO and the open-loop run confirmed it; "
            "1 target, server or input error; 2 bad flags; 6 no configuration met the SLO; "
            "7 the confirmation run missed the SLO; 130 interrupted"
        ),
    )
    add_target_arguments(p)
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="the model, when TARGET is the server's URL (http://HOST:PORT)",
    )
    p.add_argument("--version", dest="version", default=None, metavar="V", help="model version")
    p.add_argument(
        "--slo",
        type=_targets,
        required=True,
        metavar="TARGETS",
        help="latency targets, e.g. 'p99<20ms' (the first is the front's axis and the bound "
        "pruning uses)",
    )
    space = p.add_argument_group("search space")
    space.add_argument(
        "--max-batch-sizes",
        type=_whole_list,
        default=None,
        metavar="LIST",
        help="e.g. 1,2,4,8 or 1:64:x2 (default: powers of two up to the max_batch_size in force)",
    )
    space.add_argument(
        "--max-waits",
        type=_waits,
        default=None,
        metavar="LIST",
        help="e.g. 0,0.5ms,1ms (default: 0,0.5ms,1ms,2ms,5ms)",
    )
    space.add_argument(
        "--slots",
        type=_whole_list,
        default=None,
        metavar="LIST",
        help="max_concurrent_batches values (default: 1 up to the value in force, at most 4)",
    )
    space.add_argument(
        "--workers",
        type=_whole_list,
        default=None,
        metavar="LIST",
        help="worker counts, e.g. 1,2: needs --repository (tune starts each server itself)",
    )
    space.add_argument(
        "--repository", type=Path, default=None, metavar="DIR", help="the model repository"
    )
    space.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="another flag for the servers tune starts (repeatable: --serve-arg=--log-level "
        "--serve-arg=info)",
    )
    space.add_argument(
        "--no-prune", action="store_true", help="sweep every batch size and wait given"
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "-c",
        "--concurrency",
        type=_whole_list,
        default=None,
        metavar="RANGE",
        help="each configuration's closed-loop ramp (default: 1:256:x2, ended by the SLO or a "
        "plateau)",
    )
    load.add_argument(
        "--plateau-steps",
        type=int,
        default=4,
        metavar="N",
        help="a ramp ends when its last N steps gained < 5%% (default: 4)",
    )
    load.add_argument("--procs", type=int, default=1, help="load processes (default: 1)")
    load.add_argument("--cpus", default="", metavar="LIST", help="pin the load processes: 0,1")
    load.add_argument("--timeout", type=_duration, default=30.0, metavar="TIME")
    load.add_argument(
        "--confirm-load",
        type=_percent,
        default=0.90,
        metavar="PCT",
        help="the confirmation's rate, a share of the winner's throughput (default: 90%%)",
    )
    load.add_argument("--no-confirm", action="store_true", help="skip the open-loop confirmation")
    add_input_arguments(p)
    measure = p.add_argument_group("measurement")
    measure.add_argument("--window", type=_duration, default=1.0, metavar="TIME")
    measure.add_argument("--warmup", type=_duration, default=1.0, metavar="TIME")
    measure.add_argument("--max-windows", type=int, default=6, metavar="N")
    measure.add_argument(
        "--stability", type=_percent, default=0.10, metavar="PCT", help="default: 10%%"
    )
    measure.add_argument("--metrics-url", default=None, help="default: URL/metrics")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, metavar="FILE")
    out.add_argument("--plot", type=Path, default=None, metavar="FILE.png|.svg|.html")
    out.add_argument("--write-config", type=Path, default=None, metavar="FILE")
    out.add_argument("--no-terminal-plot", action="store_true")
    out.add_argument("--quiet", action="store_true", help="only the results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coserve tune``; returns the exit status."""
    args = parser().parse_args(argv)
    console, errors = consoles()
    problem = _check_flags(args)
    if problem:
        errors.print(f"coserve tune: {problem}")
        return 2
    try:
        return _tune(args, console, errors)
    except CoserveError as error:
        errors.print(f"[red]coserve tune:[/] {error}", highlight=False)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _check_flags(args: argparse.Namespace) -> str | None:
    if args.workers and args.repository is None:
        return "--workers needs --repository: tune starts a server per worker count"
    if args.repository is not None and not args.workers:
        args.workers = [1]
    if args.repository is not None and ("/" in args.target or ":" in args.target):
        return "with --repository, TARGET is the model's name"
    if args.model is not None:
        if not args.target.startswith("http://") or "/v" in args.target.split("//", 1)[1]:
            return "--model goes with a server URL as TARGET (http://HOST:PORT)"
        args.target = f"{args.target.rstrip('/')}/v2/models/{args.model}"
    if args.version is not None:
        args.model_version = args.version
    if args.target.startswith(("https://", "wss://")):
        return "coserve tune speaks plain HTTP and WebSocket (no TLS)"
    if min(args.procs, args.batch_size, args.plateau_steps, args.max_windows) < 1:
        return "--procs, --batch-size, --plateau-steps and --max-windows must be >= 1"
    if args.confirm_load <= 0:
        return "--confirm-load must be above 0%"
    return None


@dataclass
class _Server:
    """The server being tuned now, and what drives it."""

    target: Target
    admin: AdminClient
    runner: Any
    original: dict[str, Any]
    workers: int | None
    managed: ManagedServer | None = None


@dataclass
class _Run:
    """Everything a run found, for the report and ``--json``."""

    profile: list[dict[str, Any]] = field(default_factory=list)
    profile_points: list[tuple[float, float]] = field(default_factory=list)
    model: LatencyModel | None = None
    pruning: Pruning | None = None
    waits_pruned: list[float] = field(default_factory=list)
    results: list[ConfigResult] = field(default_factory=list)
    confirm: Any = None
    restored: bool | None = None
    adaptive_target: str | None = None
    """The model's target_latency when tune began (tune measures with it off)."""


class _Tuner:
    """The run: starts and stops servers and load processes, sets options, restores them."""

    def __init__(self, args: argparse.Namespace, console: Any, errors: Any) -> None:
        from coserve.bench._runner import WindowPolicy

        self.args = args
        self.console = console
        self.errors = errors
        self.slo: tuple[LatencyTarget, ...] = args.slo
        self.policy = WindowPolicy(
            window=args.window,
            warmup=args.warmup,
            max_windows=max(3, args.max_windows),
            tolerance=args.stability,
        )
        self.server: _Server | None = None
        self.bodies: list[Body] | None = None
        self.adaptive_target: str | None = None  # target_latency as the model had it

    def use(self, workers: int | None) -> _Server:
        """The server for ``workers`` (None: the one TARGET names), started if need be."""
        if self.server is not None and self.server.workers == workers:
            return self.server
        self.close()
        managed = None
        if workers is None:
            target = resolve_target(self.args)
        else:
            grpc = (self.args.protocol or "").startswith("grpc")
            managed = ManagedServer(
                self.args.repository, workers, grpc=grpc, extra_args=self.args.serve_arg
            )
            try:
                self.say(f"starting coserve serve --admin --workers {workers} at {managed.url}")
                managed.wait_ready()
            except BaseException:
                managed.close()
                raise
            target = Target(
                managed.url,
                self.args.target,
                self.args.model_version,
                self.args.protocol or "v2",
                f"127.0.0.1:{managed.grpc_port or 8001}",
            )
        try:
            admin = AdminClient(target)
            original = admin.get()
            if self.bodies is None:  # the same requests for every server
                self.bodies = build_bodies(self.args, target)
            from coserve.bench._runner import LoadRunner

            runner = LoadRunner(
                target,
                self.bodies,
                processes=self.args.procs,
                timeout=self.args.timeout,
                metrics_url=self.args.metrics_url or f"{target.base_url}/metrics",
                cpus=[int(c) for c in self.args.cpus.split(",") if c.strip()],
            )
        except BaseException:
            if managed is not None:
                managed.close()
            raise
        self.server = _Server(target, admin, runner, original, workers, managed)
        if original.get("target_latency") is not None:
            self.adaptive_target = str(original["target_latency"])
        return self.server

    def close(self) -> bool | None:
        """Restore the options tune changed, stop the load processes and a server it started.

        Returns whether the options were restored (None: nothing to restore).
        """
        server, self.server = self.server, None
        if server is None:
            return None
        restored: bool | None = None
        try:
            if server.managed is None:
                restored = False
                server.admin.set({k: server.original[k] for k in _changed(server.original)})
                restored = True
        except CoserveError as error:
            self.errors.print(f"[red]could not restore the batching options:[/] {error}")
        except KeyboardInterrupt:
            self.errors.print(
                "[red]interrupted before the batching options were restored;[/] they were: "
                + ", ".join(f"{k}={server.original[k]!r}" for k in _changed(server.original))
            )
            raise
        finally:
            server.runner.close()
            if server.managed is not None:
                server.managed.close()
        return restored

    def apply(self, config: TuneConfig) -> None:
        """Set ``config``'s options on the server, with the adaptive mode off if it was on.

        Raises:
            AdminRefusedError: The model does not accept them (nothing changed).
        """
        assert self.server is not None
        options = config.options()
        if self.server.original.get("target_latency") is not None:
            # Adaptive batching would move the options being measured: measure them as set.
            options["target_latency"] = None
        self.server.admin.set(options)

    def say(self, text: str) -> None:
        """A progress line (not with --quiet)."""
        if not self.args.quiet:
            self.console.print(text)

    def measure(self, config: TuneConfig, concurrency: int) -> tuple[RampPoint, Any]:
        """One closed-loop step of ``config`` (already set) at ``concurrency``."""
        from coserve.bench._report import step_record
        from coserve.bench._runner import Step, latency_summary, statistic_ms

        assert self.server is not None
        result = self.server.runner.run(Step("closed", concurrency=concurrency), self.policy)
        summary = latency_summary(result.latency)
        server = result.server
        point = RampPoint(
            config=config,
            concurrency=concurrency,
            throughput=result.throughput,
            latency_ms=statistic_ms(result.latency, self.slo[0]),
            p50_ms=summary.get("p50", float("inf")),
            p99_ms=summary.get("p99", float("inf")),
            meets_slo=result.meets(self.slo),
            mean_batch=server.mean_batch if server else None,
            record=step_record(result, self.slo),
        )
        self.say(
            f"  {config.label:<32} c={concurrency:<4} {point.throughput:8.0f} ok/s  "
            f"{self.slo[0].statistic} {point.latency_ms:8.2f} ms  "
            f"{'meets' if point.meets_slo else 'misses'} the SLO"
        )
        return point, result


def _changed(original: dict[str, Any]) -> list[str]:
    """The options tune sets, and so restores (``target_latency`` only where it was on)."""
    extra = ["target_latency"] if original.get("target_latency") is not None else []
    return [*TUNED_OPTIONS, *extra]


def _defaults(args: argparse.Namespace, original: dict[str, Any]) -> tuple[list[int], ...]:
    """The space's batch sizes and slots: the flags', else from the options in force."""
    loaded_max = int(original["max_batch_size"])
    sizes = args.max_batch_sizes
    if sizes is None:
        sizes, b = [], 1
        while b <= loaded_max:
            sizes.append(b)
            b *= 2
        if sizes[-1] != loaded_max:
            sizes.append(loaded_max)
    slots = args.slots or list(range(1, min(int(original["max_concurrent_batches"]), 4) + 1))
    return sorted(set(sizes)), sorted(set(slots))


def _profile(tuner: _Tuner, run: _Run, sizes: list[int]) -> None:
    """Fit s(n) from closed-loop steps at max_wait=0, the largest size, one slot."""
    assert tuner.server is not None
    largest = max(sizes)
    config = TuneConfig(tuner.server.workers or 1, 1, largest, 0.0)
    try:
        tuner.apply(config)
    except AdminRefusedError as error:
        tuner.errors.print(f"[yellow]no profile:[/] the server refused {config.label}: {error}")
        return
    tuner.say(f"profile: {config.label}, closed loop")
    # With one slot a closed loop of c clients makes batches of about c rows: a spread of sizes.
    for concurrency in sorted({1, max(1, largest // 4), largest, 2 * largest}):
        point, result = tuner.measure(config, concurrency)
        run.profile.append(point.record or {})
        server = result.server
        if server is not None and server.mean_batch and server.execution_ms is not None:
            run.profile_points.append((server.mean_batch, server.execution_ms / 1e3))
    run.model = fit_latency(run.profile_points)
    if run.model is None:
        tuner.errors.print(
            "[yellow]note:[/] no latency model: the server's /metrics gave no batch sizes or "
            "execution times to fit (or only one size); nothing is pruned"
        )


def _sweep_axis(
    values: Sequence[Any], measure: Callable[[Any], float], *, stop_on_zero: bool = False
) -> float:
    """``measure(v)`` for each value in order until larger values stop paying (a plateau).

    Returns the best ``measure`` gave (0.0: nothing met the SLO).
    """
    found: list[float] = []
    for value in values:
        found.append(measure(value))
        if stop_on_zero and found[-1] <= 0:
            break
        if plateaued(found, AXIS_STEPS):
            break
    return max(found, default=0.0)


def _tune(args: argparse.Namespace, console: Any, errors: Any) -> int:
    tuner = _Tuner(args, console, errors)
    run = _Run()
    started = time.time()
    concurrencies = args.concurrency or _whole_list("1:256:x2")
    limit = args.slo[0].limit
    worker_counts: list[int | None] = list(args.workers) if args.workers else [None]
    winner: RampPoint | None = None
    try:
        server = tuner.use(worker_counts[0])
        original = dict(server.original)
        sizes, slots = _defaults(args, original)
        waits = list(args.max_waits if args.max_waits is not None else DEFAULT_WAITS)
        tuner.say(
            f"coserve tune: {server.target.model} at {server.target.base_url}, SLO "
            f"{', '.join(map(str, args.slo))}; options in force: "
            + ", ".join(f"{k}={original[k]}" for k in TUNED_OPTIONS)
        )
        _profile(tuner, run, sizes)
        if run.model is not None:
            console.print(
                f"latency model: s(n) = {run.model.c * 1e3:.3f} ms + {run.model.a * 1e3:.4f} "
                f"ms/row (fitted from {run.model.points} profile steps)"
            )
            if not args.no_prune:
                run.pruning = prune_batch_sizes(sizes, run.model, limit)
                sizes = run.pruning.kept
                if not run.pruning.pruned:
                    tuner.say(f"pruned no max_batch_size: 2·s(B) <= {limit * 1e3:g} ms for all")
                else:
                    console.print(
                        "pruned max_batch_size "
                        + ", ".join(
                            f"{b} (2·s={2 * run.model.predict(b) * 1e3:.1f} ms)"
                            for b in run.pruning.pruned
                        )
                        + f": above the SLO's {limit * 1e3:g} ms"
                    )
                lone = run.model.predict(1)
                run.waits_pruned = [w for w in waits[1:] if w + lone > limit]
                waits = [w for w in waits if w not in run.waits_pruned]
                if run.waits_pruned:
                    console.print(
                        "pruned max_wait "
                        + ", ".join(f"{w * 1e3:g} ms" for w in run.waits_pruned)
                        + f": a lone request would wait it and run {lone * 1e3:.1f} ms"
                    )

        def sweep_config(config: TuneConfig) -> float:
            result = ConfigResult(config)
            run.results.append(result)
            assert tuner.server is not None
            try:
                tuner.apply(config)
            except AdminRefusedError as error:
                result.skipped = str(error)
                tuner.say(f"  {config.label:<32} skipped: {error}")
                return 0.0
            result.points = ramp(
                lambda c: tuner.measure(config, c)[0],
                concurrencies,
                plateau_steps=args.plateau_steps,
            )
            best = result.best
            return best.throughput if best else 0.0

        def by_size(count: int, slot: int, size: int) -> float:
            # A wait whose configuration misses the SLO at its lightest load ends the axis: a
            # lone request only waits longer with a larger one.
            return _sweep_axis(
                waits,
                lambda wait: sweep_config(TuneConfig(count, slot, size, wait)),
                stop_on_zero=True,
            )

        def by_slots(count: int, slot: int) -> float:
            return _sweep_axis(sizes, lambda size: by_size(count, slot, size))

        def sweep_workers(workers: int | None) -> float:
            tuner.use(workers)
            return _sweep_axis(slots, lambda slot: by_slots(workers or 1, slot))

        _sweep_axis(worker_counts, sweep_workers)
        meeting = [p for r in run.results for p in r.points if p.meets_slo]
        winner = max(meeting, key=lambda p: p.throughput) if meeting else None
        if winner is not None and not args.no_confirm:
            run.confirm = _confirm(tuner, winner)
    finally:
        run.restored = tuner.close()
        run.adaptive_target = tuner.adaptive_target
    status = _report(args, console, errors, run, winner, started)
    if run.restored is False:
        status = status or EXIT_ERROR
    return status


def _confirm(tuner: _Tuner, winner: RampPoint) -> Any:
    """The winner's options, an open-loop Poisson run at --confirm-load of its throughput."""
    from coserve.bench._runner import Step

    server = tuner.use(winner.config.workers if tuner.args.workers else None)
    tuner.apply(winner.config)
    rate = max(1.0, round(tuner.args.confirm_load * winner.throughput, 1))
    tuner.say(f"confirming {winner.config.label}: open loop (Poisson) at {rate:g}/s")
    return server.runner.run(Step("open", rate=rate, arrival="poisson"), tuner.policy)


def _report(
    args: argparse.Namespace,
    console: Any,
    errors: Any,
    run: _Run,
    winner: RampPoint | None,
    started: float,
) -> int:
    from coserve.bench._report import step_record, write_json
    from coserve.bench._runner import latency_summary, statistic_ms
    from coserve.bench._tune_report import config_table, front_of, front_table, plot_front
    from coserve.bench._tune_search import batching_block

    slo = args.slo
    statistic = slo[0].statistic
    front = front_of(run.results)
    table = config_table(run.results, statistic, front, winner)
    console.print(table)
    if front:
        console.print(front_table(front, statistic))
    status = 0
    title = f"coserve tune: {args.target}"
    width = None
    if not args.no_terminal_plot and not args.quiet and console.is_terminal and front:
        width = min(console.width, 120)
    try:
        text = plot_front(
            args.plot,
            run.results,
            front,
            statistic=statistic,
            limit_ms=slo[0].limit * 1e3,
            title=title,
            table=table,
            width=width,
        )
        if text:
            console.print(text)
    except ImportError:
        errors.print("--plot needs matplotlib: pip install 'coserve[plot]'")
        status = EXIT_ERROR
    except ValueError as error:
        errors.print(str(error))
        status = EXIT_ERROR
    block = batching_block(winner.config, run.adaptive_target) if winner else None
    confirm = run.confirm
    confirmed = None
    if winner is None:
        errors.print(f"[red]no configuration met {', '.join(map(str, slo))}[/]")
        status = status or EXIT_NO_CONFIG
    else:
        console.print(
            f"best under {', '.join(map(str, slo))}: [bold]{winner.config.label}[/] at "
            f"c={winner.concurrency}: {winner.throughput:.0f} ok/s, {statistic} "
            f"{winner.latency_ms:.2f} ms"
        )
        console.print(block, markup=False, end="")
        if args.write_config is not None:
            args.write_config.write_text(block or "", encoding="utf-8")
    if confirm is not None:
        confirmed = confirm.meets(slo)
        summary = latency_summary(confirm.latency)
        p99 = f" (p99 {summary.get('p99', math.nan):.2f} ms)" if statistic != "p99" else ""
        console.print(
            f"confirmation, open loop at {confirm.step.rate:g}/s: {confirm.throughput:.0f} ok/s "
            f"of {confirm.offered or 0:.0f}/s offered, {statistic} "
            f"{statistic_ms(confirm.latency, slo[0]):.2f} ms from the intended send time{p99}, "
            f"{sum(confirm.errors.values())} errors: "
            + ("[green]meets the SLO[/]" if confirmed else "[red]misses the SLO[/]")
        )
        if not confirmed:
            status = status or EXIT_CONFIRM_FAILED
    if args.json is not None:
        write_json(
            args.json,
            {
                "tool": "coserve tune",
                "command": sys.argv,
                "started": started,
                "target": args.target,
                "slo": [str(t) for t in slo],
                "settings": {
                    "window_s": args.window,
                    "warmup_s": args.warmup,
                    "plateau_steps": args.plateau_steps,
                    "concurrency": args.concurrency,
                    "workers": args.workers,
                },
                "profile": {
                    "steps": run.profile,
                    "points": [{"rows": n, "execution_ms": s * 1e3} for n, s in run.profile_points],
                    "model": run.model.as_dict() if run.model else None,
                },
                "pruning": run.pruning.as_dict() if run.pruning else None,
                "waits_pruned_ms": [w * 1e3 for w in run.waits_pruned],
                "configs": [result.as_dict() for result in run.results],
                "pareto": [{"label": p.config.label, **_point(p)} for p in front],
                "best": {"label": winner.config.label, **_point(winner)} if winner else None,
                "batching_toml": block,
                "confirm": (
                    {"meets_slo": confirmed, "step": step_record(confirm, slo)}
                    if confirm is not None
                    else None
                ),
                "restored": run.restored,
            },
        )
    return status


def _point(point: RampPoint) -> dict[str, Any]:
    from coserve.bench._tune_report import point_dict

    return point_dict(point)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
