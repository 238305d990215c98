"""Property tests for coroutine graphs: every message ends exactly once, whatever the timing.

Each example builds a random graph and runs it on its own event loop with looptime's virtual
clock (see tests/test_properties.py): node delays, join timeouts and drain deadlines take no real
time, and the same example always interleaves the same way, so a failure is reproducible.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import looptime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import (
    DeadLetter,
    Graph,
    GraphFailed,
    GraphStopped,
    Input,
    Node,
    Output,
    Signal,
    Supervision,
    UnmatchedSignal,
    port,
)

T = TypeVar("T")

PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
VIRTUAL_TIME_LIMIT = 10_000.0  # a scenario still running after this much virtual time is a hang

times = st.integers(0, 8).map(lambda q: q / 4)  # 0 … 2 s in quarter seconds: ties happen
capacities = st.sampled_from([0, 1, 2, 16])


def run_virtual(scenario: Coroutine[Any, Any, T]) -> T:
    """Run one scenario on a fresh virtual-time loop (not asyncio.run: see test_batcher.py)."""
    loop = looptime.new_event_loop(start=0.0)
    try:
        return loop.run_until_complete(asyncio.wait_for(scenario, VIRTUAL_TIME_LIMIT))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def graph_tasks() -> list[asyncio.Task[Any]]:
    """The graph's node tasks that are still alive on the running loop."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("coserve.graph:")]


# -- nodes ------------------------------------------------------------------------------------


class Source(Node):
    """Sends one message per id (the value is the id unless given), a delay before each."""

    out: Output[Any]

    def __init__(
        self,
        ids: Sequence[Hashable],
        delays: Sequence[float] = (),
        values: Sequence[Any] | None = None,
    ) -> None:
        self.ids = list(ids)
        self.values = list(ids) if values is None else list(values)
        self.delays = list(delays) or [0.0]
        self.sent: list[Hashable] = []  # ids whose send returned: delivered to the graph

    async def run(self) -> None:
        for n, key in enumerate(self.ids):
            delay = self.delays[n % len(self.delays)]
            if delay:
                await asyncio.sleep(delay)
            await self.out.send(Signal(self.values[n], id=key))
            self.sent.append(key)


class Relay(Node):
    """Passes every message on after a delay; with ``tag``, appends its name to the path."""

    inp: Input[Any]
    out: Output[Any]

    def __init__(self, delays: Sequence[float] = (), *, tag: bool = False) -> None:
        self.delays = list(delays) or [0.0]
        self.tag = tag
        self.handled = 0

    async def run(self) -> None:
        async for signal in self.inp:
            delay = self.delays[self.handled % len(self.delays)]
            self.handled += 1
            if delay:
                await asyncio.sleep(delay)
            if self.tag:
                path = (*signal.meta.get("path", ()), self.name)
                signal = signal.derive(signal.value, path=path)
            await self.out.send(signal)


class Relay0(Relay):
    inp: Input[Any] = port(capacity=0)


class Relay1(Relay):
    inp: Input[Any] = port(capacity=1)


class Relay2(Relay):
    inp: Input[Any] = port(capacity=2)


class Sink(Node):
    """Keeps every message it finished with: it takes a delay over each, then records it."""

    inp: Input[Any]

    def __init__(self, delays: Sequence[float] = ()) -> None:
        self.delays = list(delays) or [0.0]
        self.seen: list[Signal[Any]] = []

    async def run(self) -> None:
        async for signal in self.inp:
            delay = self.delays[len(self.seen) % len(self.delays)]
            if delay:
                await asyncio.sleep(delay)
            self.seen.append(signal)

    @property
    def ids(self) -> Counter[Hashable]:
        return Counter(signal.id for signal in self.seen)


class Sink0(Sink):
    inp: Input[Any] = port(capacity=0)


class Sink1(Sink):
    inp: Input[Any] = port(capacity=1)


class Sink2(Sink):
    inp: Input[Any] = port(capacity=2)


RELAYS: dict[int, type[Relay]] = {0: Relay0, 1: Relay1, 2: Relay2, 16: Relay}
SINKS: dict[int, type[Sink]] = {0: Sink0, 1: Sink1, 2: Sink2, 16: Sink}


def relay(capacity: int, delays: Sequence[float] = (), *, tag: bool = False) -> Relay:
    return RELAYS[capacity](delays, tag=tag)


def sink(capacity: int, delays: Sequence[float] = ()) -> Sink:
    return SINKS[capacity](delays)


class Pair(Node):
    """A join by request id: sends ``(left value, right value)`` for each id it pairs."""

    left: Input[Any]
    right: Input[Any]
    out: Output[Any]

    def __init__(self, timeout: float, max_pending: int) -> None:
        self.timeout = timeout
        self.max_pending = max_pending

    async def run(self) -> None:
        async for a, b in self.join(
            self.left, self.right, timeout=self.timeout, max_pending=self.max_pending
        ):
            await self.out.send(a.derive((a.value, b.value)))


class Crashing(Relay):
    """Passes messages on; crashes once before sending ids in ``before``, after ids in ``after``."""

    def __init__(self, before: set[int], after: set[int], delays: Sequence[float] = ()) -> None:
        super().__init__(delays)
        self.before = set(before)
        self.after = set(after)

    async def run(self) -> None:
        async for signal in self.inp:
            delay = self.delays[self.handled % len(self.delays)]
            self.handled += 1
            if delay:
                await asyncio.sleep(delay)
            if signal.id in self.before:
                self.before.discard(signal.id)
                raise RuntimeError(f"{self.name} crashed holding {signal.id}")
            await self.out.send(signal)
            if signal.id in self.after:
                self.after.discard(signal.id)
                raise RuntimeError(f"{self.name} crashed after sending {signal.id}")


def delay_lists(max_size: int = 4) -> st.SearchStrategy[list[float]]:
    return st.lists(times, max_size=max_size)


# -- 1. fan-out and fan-in ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    capacity: int
    delays: list[float]
    upstream: list[int]  # indices into sources + relays


@dataclass(frozen=True)
class DagScenario:
    sources: list[tuple[int, list[float]]]  # per source: message count, send delays
    relays: list[Stage]
    sinks: list[Stage]


@st.composite
def dag_scenarios(draw: st.DrawFn) -> DagScenario:
    n_sources = draw(st.integers(1, 3))
    sources = [(draw(st.integers(0, 6)), draw(delay_lists(3))) for _ in range(n_sources)]
    relays: list[Stage] = []
    for index in range(draw(st.integers(0, 5))):
        upstream = draw(st.sets(st.integers(0, n_sources + index - 1), min_size=1, max_size=2))
        relays.append(Stage(draw(capacities), draw(delay_lists(3)), sorted(upstream)))
    n_feeders = n_sources + len(relays)
    sinks = [
        Stage(
            draw(capacities),
            draw(delay_lists(2)),
            sorted(draw(st.sets(st.integers(0, n_feeders - 1), min_size=1, max_size=3))),
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    # Every output feeds something later in the order (which keeps the graph acyclic).
    fed = {up for stage in relays + sinks for up in stage.upstream}
    for feeder in range(n_feeders):
        if feeder not in fed:
            later = [
                stage
                for index, stage in enumerate(relays, n_sources)
                if index > feeder and feeder not in stage.upstream
            ] + sinks
            draw(st.sampled_from(later)).upstream.append(feeder)
    return DagScenario(sources, relays, sinks)


async def play_dag(
    scenario: DagScenario,
) -> tuple[list[Counter[tuple[Hashable, tuple[str, ...]]]], list[Counter[Any]], list[DeadLetter]]:
    dead: list[DeadLetter] = []
    graph = Graph("dag", on_dead_letter=dead.append)
    feeders: list[Node] = []
    for index, (count, delays) in enumerate(scenario.sources):
        ids = [(index, n) for n in range(count)]
        feeders.append(graph.add(Source(ids, delays), name=f"s{index}"))
    relays = [
        graph.add(relay(stage.capacity, stage.delays, tag=True), name=f"r{index}")
        for index, stage in enumerate(scenario.relays)
    ]
    feeders.extend(relays)
    sinks = [graph.add(sink(stage.capacity, stage.delays)) for stage in scenario.sinks]
    wired = [*zip(relays, scenario.relays, strict=True), *zip(sinks, scenario.sinks, strict=True)]
    for node, stage in wired:
        for up in stage.upstream:
            graph.connect(feeders[up].outputs["out"], node.inputs["inp"])

    # What each sink should see: one copy of each message per path from its source.
    def paths(index: int) -> list[tuple[int, tuple[str, ...]]]:
        """(source, relays passed) for every path from a source into feeder ``index``."""
        if index < len(scenario.sources):
            return [(index, ())]
        relay_name = relays[index - len(scenario.sources)].name
        stage = scenario.relays[index - len(scenario.sources)]
        return [(s, (*p, relay_name)) for up in stage.upstream for s, p in paths(up)]

    expected = []
    for stage in scenario.sinks:
        want: Counter[tuple[Hashable, tuple[str, ...]]] = Counter()
        for up in stage.upstream:
            for source, path in paths(up):
                for n in range(scenario.sources[source][0]):
                    want[((source, n), path)] += 1
        expected.append(want)

    async with graph:
        pass
    got = [
        Counter((signal.id, tuple(signal.meta.get("path", ()))) for signal in node.seen)
        for node in sinks
    ]
    return got, expected, dead


@PROPERTY_SETTINGS
@given(dag_scenarios())
def test_fan_out_and_fan_in_deliver_every_copy_exactly_once(scenario: DagScenario) -> None:
    """Through any DAG of fan-outs and fan-ins, each sink gets each message once per path to it."""
    got, expected, dead = run_virtual(play_dag(scenario))
    assert not dead
    for received, want in zip(got, expected, strict=True):
        assert received == want


# -- 2. joins -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinScenario:
    left: list[int]
    right: list[int]
    left_delays: list[float]
    right_delays: list[float]
    timeout: float
    max_pending: int


@st.composite
def join_scenarios(draw: st.DrawFn) -> JoinScenario:
    sides = draw(st.lists(st.sampled_from(["both", "both", "both", "left", "right"]), max_size=12))
    left = [key for key, side in enumerate(sides) if side in ("both", "left")]
    right = [key for key, side in enumerate(sides) if side in ("both", "right")]
    return JoinScenario(
        left=draw(st.permutations(left)),
        right=draw(st.permutations(right)),
        left_delays=draw(delay_lists()),
        right_delays=draw(delay_lists()),
        timeout=draw(st.sampled_from([0.25, 1.0, 3.0, 1000.0])),
        max_pending=draw(st.sampled_from([1, 2, 1024])),
    )


async def play_join(scenario: JoinScenario) -> tuple[Sink, list[DeadLetter], float]:
    dead: list[DeadLetter] = []
    graph = Graph("join", on_dead_letter=dead.append)
    left = graph.add(Source(scenario.left, scenario.left_delays))
    # The values tell the sides apart: the id on the left, -(id + 1) on the right.
    values = [-key - 1 for key in scenario.right]
    right = graph.add(Source(scenario.right, scenario.right_delays, values))
    pair = graph.add(Pair(scenario.timeout, scenario.max_pending))
    out = graph.add(Sink())
    graph.connect(left.out, pair.left)
    graph.connect(right.out, pair.right)
    graph.connect(pair.out, out.inp)
    async with graph:
        pass
    return out, dead, asyncio.get_running_loop().time()


def sending_time(ids: Sequence[int], delays: Sequence[float]) -> float:
    """How long a source takes over its sends when nothing holds it up."""
    return sum((delays or [0.0])[n % max(len(delays), 1)] for n in range(len(ids)))


@PROPERTY_SETTINGS
@given(join_scenarios())
def test_join_pairs_each_id_once_or_reports_each_unmatched_message_once(
    scenario: JoinScenario,
) -> None:
    """A join pairs each id once, or reports each of its messages as UnmatchedSignal once."""
    out, dead, finished = run_virtual(play_join(scenario))
    # Nothing waits for a timeout once an input has ended: the graph ends with its sources.
    assert finished <= max(
        sending_time(scenario.left, scenario.left_delays),
        sending_time(scenario.right, scenario.right_delays),
    )
    pairs = out.ids
    assert all(n == 1 for n in pairs.values()), pairs
    for signal in out.seen:
        assert signal.value == (signal.id, -signal.id - 1)
    assert all(isinstance(letter.error, UnmatchedSignal) for letter in dead)
    dead_left = Counter(letter.signal.id for letter in dead if letter.signal.value >= 0)
    dead_right = Counter(letter.signal.id for letter in dead if letter.signal.value < 0)
    assert all(n == 1 for n in dead_left.values()), dead_left
    assert all(n == 1 for n in dead_right.values()), dead_right
    left, right = set(scenario.left), set(scenario.right)
    for key in left | right:
        if key in pairs:
            assert key in left
            assert key in right
            assert key not in dead_left
            assert key not in dead_right
        else:  # every message that came for this id is reported, once
            assert (key in dead_left) == (key in left)
            assert (key in dead_right) == (key in right)
    if scenario.timeout == 1000.0 and scenario.max_pending == 1024:  # nothing can give way
        assert set(pairs) == left & right


# -- 3. restarts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrashScenario:
    count: int
    source_delays: list[float]
    nodes: list[tuple[set[int], set[int], list[float], int]]  # before, after, delays, capacity


@st.composite
def crash_scenarios(draw: st.DrawFn) -> CrashScenario:
    count = draw(st.integers(0, 15))
    ids = st.sets(st.integers(0, max(count - 1, 0)), max_size=max(count // 2, 1))
    nodes = [
        (draw(ids), draw(ids), draw(delay_lists(3)), draw(capacities))
        for _ in range(draw(st.integers(1, 3)))
    ]
    return CrashScenario(count, draw(delay_lists(3)), nodes)


async def play_crashes(
    scenario: CrashScenario, sink_capacity: int, sink_delays: list[float], policy: Supervision
) -> tuple[Graph, Source, Sink, list[DeadLetter], bool]:
    """Source -> (relay -> crashing relay) * n -> sink; whether the graph failed."""
    dead: list[DeadLetter] = []
    graph = Graph("crashes", supervision=policy, on_dead_letter=dead.append)
    source = graph.add(Source(range(scenario.count), scenario.source_delays))
    previous: Output[Any] = source.out
    for before, after, delays, capacity in scenario.nodes:
        node = graph.add(relay(capacity, delays))
        crashing = graph.add(Crashing(before, after, delays))
        graph.connect(previous, node.inp)
        graph.connect(node.out, crashing.inp)
        previous = crashing.out
    out = graph.add(sink(sink_capacity, sink_delays))
    graph.connect(previous, out.inp)
    try:
        async with graph:
            pass
    except GraphFailed:
        assert not graph_tasks()
        return graph, source, out, dead, True
    return graph, source, out, dead, False


@PROPERTY_SETTINGS
@given(crash_scenarios(), capacities, delay_lists(2))
def test_a_restarted_node_delivers_or_reports_each_message_exactly_once(
    scenario: CrashScenario, sink_capacity: int, sink_delays: list[float]
) -> None:
    """Under one_for_one restarts each message is either delivered once or a dead letter once."""
    policy = Supervision("one_for_one", max_restarts=1000, period=1.0)
    graph, _, out, dead, failed = run_virtual(
        play_crashes(scenario, sink_capacity, sink_delays, policy)
    )
    assert not failed
    # Each id meets the crashing nodes in order: a crash before sending ends it there.
    expected_dead: set[int] = set()
    crashes = 0
    for key in range(scenario.count):
        for before, after, _, _ in scenario.nodes:
            if key in before:
                expected_dead.add(key)
                crashes += 1
                break
            crashes += key in after
    delivered = out.ids
    reported = Counter(letter.signal.id for letter in dead)
    assert all(n == 1 for n in delivered.values()), delivered
    assert all(n == 1 for n in reported.values()), reported
    assert set(reported) == expected_dead
    assert set(delivered) == set(range(scenario.count)) - expected_dead
    assert all(isinstance(letter.error, RuntimeError) for letter in dead)
    assert graph.restarts == crashes
    assert graph.state == "done"


@PROPERTY_SETTINGS
@given(
    crash_scenarios(),
    capacities,
    delay_lists(2),
    st.integers(0, 3),
    st.sampled_from([0.5, 2.0, 100.0]),
)
def test_a_graph_past_its_restart_limit_still_accounts_for_every_message(
    scenario: CrashScenario,
    sink_capacity: int,
    sink_delays: list[float],
    max_restarts: int,
    period: float,
) -> None:
    """Whether or not crashes exceed the restart intensity, each sent message ends exactly once."""
    policy = Supervision("one_for_one", max_restarts=max_restarts, period=period)
    graph, source, out, dead, failed = run_virtual(
        play_crashes(scenario, sink_capacity, sink_delays, policy)
    )
    assert out.ids + Counter(letter.signal.id for letter in dead) == Counter(source.sent)
    assert failed == (graph.state == "failed")
    if failed:  # it gave up only after using up the restarts it was allowed
        assert graph.restarts >= max_restarts
    else:
        assert source.sent == list(range(scenario.count))


# -- 4. drain -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainScenario:
    sources: list[tuple[int, list[float]]]
    relays: list[tuple[int, list[float]]]  # capacity, delays
    sink: tuple[int, list[float]]
    stop_at: float
    drain: bool
    timeout: float | None


@st.composite
def drain_scenarios(draw: st.DrawFn) -> DrainScenario:
    return DrainScenario(
        sources=draw(
            st.lists(st.tuples(st.integers(0, 20), delay_lists(3)), min_size=1, max_size=3)
        ),
        relays=draw(st.lists(st.tuples(capacities, delay_lists(3)), max_size=4)),
        sink=draw(st.tuples(capacities, delay_lists(2))),
        stop_at=draw(st.integers(0, 40).map(lambda q: q / 4)),
        drain=draw(st.booleans() | st.just(True)),
        timeout=draw(st.none() | st.integers(0, 40).map(lambda q: q / 4)),
    )


@PROPERTY_SETTINGS
@given(drain_scenarios())
def test_stop_delivers_or_reports_every_message_sent(scenario: DrainScenario) -> None:
    """After stop(), every message the sources sent was received or reported, exactly once."""

    async def play() -> tuple[Graph, list[Source], Sink, list[DeadLetter], list[str], float]:
        loop = asyncio.get_running_loop()
        dead: list[DeadLetter] = []
        graph = Graph("drain", on_dead_letter=dead.append)
        sources = [
            graph.add(Source([(index, n) for n in range(count)], delays))
            for index, (count, delays) in enumerate(scenario.sources)
        ]
        relays = [graph.add(relay(capacity, delays)) for capacity, delays in scenario.relays]
        out = graph.add(sink(*scenario.sink))
        chain: list[Node] = [*relays, out]
        for source in sources:
            graph.connect(source.out, chain[0].inputs["inp"])
        for before, after in itertools.pairwise(chain):
            graph.connect(before.outputs["out"], after.inputs["inp"])
        await graph.start()
        await asyncio.sleep(scenario.stop_at)
        await graph.stop(drain=scenario.drain, timeout=scenario.timeout)
        left = [task.get_name() for task in graph_tasks()]
        return graph, sources, out, dead, left, loop.time() - scenario.stop_at

    graph, sources, out, dead, left, stopping = run_virtual(play())
    assert not left
    if not scenario.drain:
        assert stopping == 0
    elif scenario.timeout is not None:
        assert stopping <= scenario.timeout
    sent = Counter(key for source in sources for key in source.sent)
    assert all(n == 1 for n in sent.values())
    received = out.ids
    reported = Counter(letter.signal.id for letter in dead)
    assert received + reported == sent
    assert all(isinstance(letter.error, GraphStopped) for letter in dead)
    if scenario.drain and scenario.timeout is None:  # no deadline: everything gets through
        assert not dead
    assert graph.state == "done"


# -- 5. live changes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    at: float
    kind: str  # insert | remove
    pick: int  # which link or node, modulo the choices there are then
    wait: bool  # await a removal before the next change
    capacity: int  # of an inserted node
    delays: list[float]  # of an inserted node


@dataclass(frozen=True)
class LiveScenario:
    shape: str  # chain | fan_out (a tree, one sink per leaf) | fan_in (a tree into one sink)
    stages: list[tuple[int, list[float]]]  # capacity, delays
    edges: list[int]  # stage i + 1 is fed by (chain, fan_out) or feeds (fan_in) stage edges[i]
    sink: tuple[int, list[float]]
    sends: list[tuple[float, int]]  # the delay before each send, and which inlet takes it
    changes: list[Change]


def changes(
    at: st.SearchStrategy[float], capacity: st.SearchStrategy[int]
) -> st.SearchStrategy[list[Change]]:
    return st.lists(
        st.builds(
            Change,
            at=at,
            kind=st.sampled_from(["insert", "remove"]),
            pick=st.integers(0, 50),
            wait=st.booleans(),
            capacity=capacity,
            delays=delay_lists(2),
        ),
        max_size=10,
    ).map(lambda found: sorted(found, key=lambda change: change.at))


@st.composite
def live_scenarios(
    draw: st.DrawFn, shape: st.SearchStrategy[str], *, blocked: bool = False
) -> LiveScenario:
    kind = draw(shape)
    capacity = st.sampled_from([0, 1]) if blocked else capacities
    delays = st.lists(st.just(0.0) | times, max_size=2) if blocked else delay_lists(3)
    n = draw(st.integers(1, 5))
    edges = [
        index - 1 if kind == "chain" else draw(st.integers(0, index - 1)) for index in range(1, n)
    ]
    if blocked:  # a slow sink behind tiny buffers, fed fast: nodes wait on full inputs
        sink_stage = (draw(st.sampled_from([0, 1])), [draw(st.sampled_from([0.5, 1.0, 2.0]))])
        gaps: st.SearchStrategy[float] = st.just(0.0)
        at = st.integers(0, 80).map(lambda q: q / 4)
    else:
        sink_stage = (draw(capacities), draw(delay_lists(2)))
        gaps = times
        at = st.integers(0, 40).map(lambda q: q / 4)
    return LiveScenario(
        shape=kind,
        stages=[(draw(capacity), draw(delays)) for _ in range(n)],
        edges=edges,
        sink=sink_stage,
        sends=draw(st.lists(st.tuples(gaps, st.integers(0, 4)), max_size=20)),
        changes=draw(changes(at, capacity)),
    )


async def play_live(scenario: LiveScenario) -> tuple[list[Sink], list[DeadLetter]]:
    loop = asyncio.get_running_loop()
    dead: list[DeadLetter] = []
    graph = Graph("live", on_dead_letter=dead.append)
    stages = [graph.add(relay(capacity, delays)) for capacity, delays in scenario.stages]
    for index, other in enumerate(scenario.edges, 1):
        if scenario.shape == "fan_in":
            graph.connect(stages[index].out, stages[other].inp)
        else:
            graph.connect(stages[other].out, stages[index].inp)
    sinks = []
    for stage in stages:
        if not stage.out.links:
            sinks.append(graph.add(sink(*scenario.sink)))
            graph.connect(stage.out, sinks[-1].inp)
    heads = [stage for stage in stages if not stage.inp.links]
    inlets = [graph.inlet(head.inp) for head in heads]
    removals: list[tuple[Node, asyncio.Future[None]]] = []

    async def feed(which: int) -> None:
        for key, (delay, pick) in enumerate(scenario.sends):
            if pick % len(inlets) == which:
                if delay:
                    await asyncio.sleep(delay)
                await inlets[which].send(Signal(key, id=key))

    async def rewire() -> None:
        for change in scenario.changes:
            await asyncio.sleep(max(0.0, change.at - loop.time()))
            if change.kind == "insert":
                links = [
                    link
                    for node in graph.nodes.values()
                    for output in node.outputs.values()
                    for link in output.links
                ]
                link = links[change.pick % len(links)]
                graph.insert(relay(change.capacity, change.delays), link.output, link.input)
            else:
                # An inlet is bound to its input's own channel, so a head cannot leave before its
                # inlet closes; every other relay may go (again, if it is already leaving).
                middle = [
                    node
                    for node in graph.nodes.values()
                    if isinstance(node, Relay) and node not in heads
                ]
                if not middle:
                    continue
                node = middle[change.pick % len(middle)]
                removed = graph.remove(node, bridge=True)
                removals.append((node, removed))
                if change.wait:
                    await removed

    await graph.start()
    await asyncio.gather(*(feed(which) for which in range(len(inlets))), rewire())
    for inlet in inlets:
        inlet.close()
    await graph.wait()
    for node, removed in removals:
        assert removed.done()
        assert graph.nodes.get(node.name) is not node
    assert graph.state == "done"
    return sinks, dead


def check_live(scenario: LiveScenario) -> None:
    sinks, dead = run_virtual(play_live(scenario))
    assert not dead
    everything = Counter(range(len(scenario.sends)))
    for node in sinks:
        assert node.ids == everything


@PROPERTY_SETTINGS
@given(live_scenarios(st.just("chain")))
def test_rewiring_a_running_pipeline_loses_and_doubles_nothing(scenario: LiveScenario) -> None:
    """Inserting and bridging out nodes while messages flow delivers each message exactly once."""
    check_live(scenario)


@PROPERTY_SETTINGS
@given(live_scenarios(st.sampled_from(["chain", "chain", "fan_out", "fan_in"]), blocked=True))
def test_rewiring_around_blocked_nodes_loses_and_doubles_nothing(scenario: LiveScenario) -> None:
    """Rewiring while nodes wait on full tiny inputs still delivers each message exactly once."""
    check_live(scenario)


@PROPERTY_SETTINGS
@given(live_scenarios(st.just("fan_out")))
def test_rewiring_a_running_fan_out_tree_loses_and_doubles_nothing(
    scenario: LiveScenario,
) -> None:
    """Rewiring a running fan-out tree delivers each message exactly once to every sink."""
    check_live(scenario)


@PROPERTY_SETTINGS
@given(live_scenarios(st.just("fan_in")))
def test_rewiring_a_running_fan_in_tree_loses_and_doubles_nothing(
    scenario: LiveScenario,
) -> None:
    """Rewiring a running fan-in tree fed by several inlets delivers each message exactly once."""
    check_live(scenario)
