"""Bounded, closable CSP channels for asyncio, with Trio's semantics.

Open a channel with :func:`open_channel`; it returns a ``(SendChannel, ReceiveChannel)`` pair::

    send, receive = open_channel[int](10)

    async def producer() -> None:
        async with send:                # closing the last sender ends the stream
            for i in range(100):
                await send.send(i)      # waits while the buffer is full

    async def consumer() -> None:
        async with receive:
            async for value in receive: # ends when every sender is closed
                print(value)

``clone()`` either side for many producers or consumers: the channel ends for receivers when every
send handle is closed, and senders fail with :class:`~coserve.BrokenChannelError` once every
receive handle is closed.
"""

from coserve.channels._channel import ChannelStatistics, ReceiveChannel, SendChannel, open_channel

__all__ = ["ChannelStatistics", "ReceiveChannel", "SendChannel", "open_channel"]
