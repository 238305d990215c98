"""The channel semantics, one behaviour per test (after Trio's memory channels)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from coserve import (
    BrokenChannelError,
    ChannelStatistics,
    ClosedChannelError,
    EndOfChannel,
    ReceiveChannel,
    SendChannel,
    WouldBlock,
    open_channel,
)
from helpers import settle


class TestOpening:
    def test_open_channel_returns_a_send_receive_pair(self) -> None:
        """open_channel gives a (send, receive) tuple that unpacks."""
        send, receive = open_channel[int](3)
        with send, receive:
            assert send.statistics() == receive.statistics()
            assert send.statistics().capacity == 3

    @pytest.mark.parametrize("capacity", [-1, 1.5, None, True, float("inf")])
    def test_capacity_must_be_a_non_negative_int(self, capacity: object) -> None:
        """There is no unbounded channel: capacity must be an int >= 0."""
        with pytest.raises(ValueError, match="capacity"):
            open_channel(capacity)  # type: ignore[arg-type]


class TestSendReceive:
    async def test_values_arrive_in_order(self) -> None:
        """Values are received in the order they were sent."""
        send, receive = open_channel[int](10)
        with send, receive:
            for i in range(10):
                await send.send(i)
            assert [await receive.receive() for _ in range(10)] == list(range(10))

    async def test_send_waits_while_buffer_is_full(self) -> None:
        """With the buffer full, send blocks until a receive makes room."""
        send, receive = open_channel[int](1)
        with send, receive:
            await send.send(1)
            blocked = asyncio.create_task(send.send(2))
            await settle()
            assert not blocked.done()
            assert send.statistics().tasks_waiting_send == 1
            assert await receive.receive() == 1
            await blocked
            assert await receive.receive() == 2

    async def test_capacity_zero_is_a_rendezvous(self) -> None:
        """With capacity 0 a send completes only when a receiver takes the value."""
        send, receive = open_channel[str](0)
        with send, receive:
            with pytest.raises(WouldBlock):
                send.send_nowait("x")
            sender = asyncio.create_task(send.send("x"))
            await settle()
            assert not sender.done()
            assert send.statistics().buffer_used == 0
            assert await receive.receive() == "x"
            await sender

    async def test_receive_waits_for_a_value(self) -> None:
        """Receive blocks until something is sent."""
        send, receive = open_channel[int](0)
        with send, receive:
            receiver = asyncio.create_task(receive.receive())
            await settle()
            assert receive.statistics().tasks_waiting_receive == 1
            send.send_nowait(7)
            assert await receiver == 7

    def test_nowait_forms_raise_would_block(self) -> None:
        """send_nowait on a full buffer and receive_nowait on an empty one raise WouldBlock."""
        send, receive = open_channel[int](1)
        with send, receive:
            with pytest.raises(WouldBlock):
                receive.receive_nowait()
            send.send_nowait(1)
            with pytest.raises(WouldBlock):
                send.send_nowait(2)
            assert receive.receive_nowait() == 1

    async def test_waiting_senders_are_served_first_come_first_served(self) -> None:
        """Blocked senders deliver in the order they blocked."""
        send, receive = open_channel[int](0)
        with send, receive:
            senders = [asyncio.create_task(send.send(i)) for i in range(5)]
            await settle()
            assert [await receive.receive() for _ in range(5)] == list(range(5))
            await asyncio.gather(*senders)


class TestClosing:
    async def test_async_for_ends_when_every_sender_closes(self) -> None:
        """Async for drains the buffer, then stops once every send handle is closed."""
        send, receive = open_channel[int](5)
        second = send.clone()
        with receive:
            await send.send(1)
            send.close()
            await second.send(2)
            second.close()
            assert [v async for v in receive] == [1, 2]

    async def test_close_wakes_a_waiting_receiver_with_end_of_channel(self) -> None:
        """A receiver blocked on an empty channel gets EndOfChannel when the last sender closes."""
        send, receive = open_channel[int](0)
        with receive:
            receiver = asyncio.create_task(receive.receive())
            await settle()
            send.close()
            with pytest.raises(EndOfChannel):
                await receiver

    async def test_send_after_every_receiver_closed_is_broken(self) -> None:
        """Once every receive handle is closed, send raises BrokenChannelError."""
        send, receive = open_channel[int](1)
        with send:
            receive.close()
            with pytest.raises(BrokenChannelError):
                await send.send(1)
            with pytest.raises(BrokenChannelError):
                send.send_nowait(1)

    async def test_closing_receivers_fails_blocked_senders(self) -> None:
        """A sender blocked on a full channel fails when the last receiver closes."""
        send, receive = open_channel[int](0)
        with send:
            sender = asyncio.create_task(send.send(1))
            await settle()
            receive.close()
            with pytest.raises(BrokenChannelError):
                await sender

    async def test_a_closed_handle_cannot_be_used(self) -> None:
        """Every operation on a closed handle raises ClosedChannelError."""
        send, receive = open_channel[int](1)
        send.close()
        receive.close()
        with pytest.raises(ClosedChannelError):
            await send.send(1)
        with pytest.raises(ClosedChannelError):
            await receive.receive()
        with pytest.raises(ClosedChannelError):
            send.clone()
        with pytest.raises(ClosedChannelError):
            receive.clone()

    async def test_closing_a_handle_fails_its_own_blocked_operation(self) -> None:
        """A task blocked on a handle gets ClosedChannelError when that very handle closes."""
        send, receive = open_channel[int](0)
        with send:
            receiver = asyncio.create_task(receive.receive())
            await settle()
            receive.close()
            with pytest.raises(ClosedChannelError):
                await receiver

    def test_close_is_synchronous_and_idempotent(self) -> None:
        """close() needs no event loop and may be called twice."""
        send, receive = open_channel[int](1)
        send.close()
        send.close()
        receive.close()
        assert send.closed
        assert receive.closed
        assert send.statistics().open_send_channels == 0

    async def test_async_with_closes_the_handle(self) -> None:
        """Leaving async with closes the handle."""
        send, receive = open_channel[int](1)
        async with send, receive:
            pass
        assert send.closed
        assert receive.closed

    def test_an_unclosed_handle_warns_when_collected(self) -> None:
        """Dropping a handle without closing it emits a ResourceWarning."""

        def drop_an_open_send_handle() -> None:
            send, receive = open_channel[int](1)
            receive.close()
            del send
            gc.collect()

        with pytest.warns(ResourceWarning, match="unclosed SendChannel"):
            drop_an_open_send_handle()


class TestClones:
    async def test_clones_share_values_rather_than_copy_them(self) -> None:
        """Two receive clones split the values between them; none is seen twice."""
        send, receive = open_channel[int](10)
        other = receive.clone()
        with send, receive, other:
            for i in range(4):
                send.send_nowait(i)
            got = [receive.receive_nowait(), other.receive_nowait()]
            got += [receive.receive_nowait(), other.receive_nowait()]
            assert sorted(got) == [0, 1, 2, 3]

    async def test_stream_ends_only_when_every_send_clone_closes(self) -> None:
        """Closing one of two send clones does not end the stream."""
        send, receive = open_channel[int](1)
        clone = send.clone()
        with receive:
            send.close()
            with pytest.raises(WouldBlock):
                receive.receive_nowait()
            clone.close()
            with pytest.raises(EndOfChannel):
                receive.receive_nowait()

    async def test_many_producers_and_consumers(self) -> None:
        """Three producers and three consumers on clones move every value exactly once."""
        send, receive = open_channel[int](2)
        received: list[int] = []

        async def produce(channel: SendChannel[int], start: int) -> None:
            async with channel:
                for i in range(start, start + 100):
                    await channel.send(i)

        async def consume(channel: ReceiveChannel[int]) -> None:
            async with channel:
                received.extend([value async for value in channel])

        async with send, receive:
            producers = [produce(send.clone(), k * 100) for k in range(3)]
            consumers = [consume(receive.clone()) for _ in range(3)]
            send.close()
            await asyncio.gather(*producers, *consumers)
        assert sorted(received) == list(range(300))


class TestStatistics:
    async def test_statistics_report_buffer_handles_and_waiters(self) -> None:
        """statistics() counts buffered values, open handles and waiting tasks."""
        send, receive = open_channel[int](1)
        clone = send.clone()
        with send, receive, clone:
            send.send_nowait(1)
            blocked = asyncio.create_task(clone.send(2))
            await settle()
            assert receive.statistics() == ChannelStatistics(
                buffer_used=1,
                capacity=1,
                open_send_channels=2,
                open_receive_channels=1,
                tasks_waiting_send=1,
                tasks_waiting_receive=0,
            )
            receive.receive_nowait()
            await blocked

    def test_statistics_are_frozen(self) -> None:
        """The statistics record cannot be modified."""
        send, receive = open_channel[int](1)
        with send, receive:
            stats = send.statistics()
            with pytest.raises(AttributeError):
                stats.buffer_used = 5  # type: ignore[misc]


class TestCancellation:
    async def test_cancelled_receive_leaves_the_channel_unchanged(self) -> None:
        """A receive cancelled while waiting takes nothing: the next value goes to the next one."""
        send, receive = open_channel[int](1)
        with send, receive:
            first = asyncio.create_task(receive.receive())
            await settle()
            first.cancel()
            await settle()
            send.send_nowait(5)
            assert receive.receive_nowait() == 5

    async def test_receive_cancelled_after_hand_over_puts_the_value_back(self) -> None:
        """A receiver handed a value but cancelled before resuming returns it to the channel."""
        send, receive = open_channel[int](0)
        with send, receive:
            receiver = asyncio.create_task(receive.receive())
            await settle()
            send.send_nowait(42)  # handed straight to the waiting receiver...
            receiver.cancel()  # ...which is cancelled before it can run
            with pytest.raises(asyncio.CancelledError):
                await receiver
            assert receive.receive_nowait() == 42

    async def test_cancelled_send_delivers_nothing(self) -> None:
        """A send cancelled while blocked never delivers its value."""
        send, receive = open_channel[int](0)
        with send, receive:
            sender = asyncio.create_task(send.send(1))
            await settle()
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            with pytest.raises(WouldBlock):
                receive.receive_nowait()

    async def test_send_delivered_as_it_is_cancelled_returns_and_cancels_later(self) -> None:
        """A send whose value was taken as it was cancelled returns; the cancel hits next await."""
        send, receive = open_channel[int](0)
        reached_next_await = asyncio.Event()
        send_returned = False

        async def sender() -> None:
            nonlocal send_returned
            await send.send(1)
            send_returned = True
            reached_next_await.set()
            await asyncio.sleep(0)  # the deferred cancellation is delivered here

        with send, receive:
            task = asyncio.create_task(sender())
            await settle()
            assert receive.receive_nowait() == 1  # taken from the blocked sender...
            task.cancel()  # ...before it resumed
            with pytest.raises(asyncio.CancelledError):
                await task
            assert send_returned
            assert reached_next_await.is_set()
            assert task.cancelling() == 1
