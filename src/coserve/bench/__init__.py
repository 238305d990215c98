"""``coserve bench``: a load generator and report for a running inference server.

Layers, top down: ``_cli`` (flags, the run, exit status) → ``_report`` (table, JSON, CSV,
plots, ``--compare``) → ``_runner`` (load processes, windows, stability) → ``_load`` (one
process's closed or open loop) → ``_engines`` (HTTP/1.1, WebSocket, gRPC connections) and
``_payload`` (inputs, encoded once). ``_server_stats`` reads the server's ``/metrics``.
``coserve tune`` is ``_tune`` (the run) over the same runner, with ``_tune_search`` (the space,
the latency fit, pruning, plateau and Pareto rules), ``_tune_server`` (the admin API, servers
per worker count) and ``_tune_report``.
Needs the ``tools`` extra (hdrhistogram, rich, plotext); ``--plot`` also matplotlib.
"""

from coserve.bench._cli import main

__all__ = ["main"]
