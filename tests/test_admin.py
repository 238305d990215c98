"""The admin API's guard: it answers loopback clients and the workers' Unix sockets only.

Its behaviour through a real server (changes reaching every worker, errors, metrics) is in
test_workers.py; without ``--admin`` it is not served at all (test_server.py).
"""

from __future__ import annotations

import pytest
from starlette.requests import Request

from coserve.server._admin import is_local


@pytest.mark.parametrize(
    ("client", "local"),
    [
        (("127.0.0.1", 50000), True),
        (("127.3.4.5", 50000), True),
        (("::1", 50000), True),
        (("::ffff:127.0.0.1", 50000), True),
        (None, True),  # a Unix socket: the workers' private ones
        (("10.0.0.7", 50000), False),
        (("192.168.1.20", 50000), False),
        (("::ffff:10.0.0.7", 50000), False),
        (("2001:db8::1", 50000), False),
    ],
)
def test_only_loopback_and_unix_clients_are_local(
    client: tuple[str, int] | None, local: bool
) -> None:
    """Loopback addresses (IPv4, IPv6, IPv4-mapped) and socket peers pass; others do not."""
    request = Request({"type": "http", "client": client, "headers": [], "method": "GET"})
    assert is_local(request) is local
