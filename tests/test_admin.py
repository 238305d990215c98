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
        (("10.0.0.7", 50000), False),
        (("192.168.1.20", 50000), False),
        (("::ffff:10.0.0.7", 50000), False),
        (("2001:db8::1", 50000), False),
    ],
)
def test_only_loopback_and_unix_clients_are_local(client: tuple[str, int], local: bool) -> None:
    """Loopback addresses (IPv4, IPv6, IPv4-mapped) pass; others do not."""
    scope = {"type": "http", "client": client, "server": ("127.0.0.1", 8000), "headers": []}
    request = Request({**scope, "method": "GET"})
    assert is_local(request) is local


@pytest.mark.parametrize(
    ("server", "client", "local"),
    [
        (("/run/coserve/worker-1.sock", None), None, True),  # a worker's private Unix socket
        (("127.0.0.1", 8000), None, False),  # TCP with no peer address (reset): not local
        (("127.0.0.1", 8000), ("", 0), False),
        (("127.0.0.1", 8000), ("127.evil", 1), False),
        (("::", 8000), ("::1:2:3:4", 1), False),
    ],
)
def test_a_missing_or_odd_peer_is_not_local(
    server: tuple[str, int | None], client: tuple[str, int] | None, local: bool
) -> None:
    """Only the server's own address says Unix socket; a peer must parse as loopback."""
    scope = {"type": "http", "client": client, "server": server, "headers": [], "method": "GET"}
    assert is_local(Request(scope)) is local
