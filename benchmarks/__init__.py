"""The txcmux benchmark suite: each scenario through a txcmux port and direct.

Run every scenario and print the table (and, with matplotlib, a chart)::

    python -m benchmarks                      # the full run: 5 rounds each
    python -m benchmarks --quick              # every scenario once, briefly
    python -m benchmarks --only h2c --rounds 7

Each scenario starts its servers as separate processes
(``python -m benchmarks.server SCENARIO MODE``) and drives them with real
load generators in other processes: wrk, h2load, or a Python client from
:mod:`benchmarks.clients` where no external tool fits.  HAProxy, sslh
and Go's cmux (:mod:`benchmarks.peers`, ``benchmarks/gocmux``) are measured
in the same rounds where they are installed.  See
``docs/performance.md`` for the results and how to read them.
"""
