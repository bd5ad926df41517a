"""The peers txcmux is measured against: HAProxy, sslh and Go's cmux.

A user choosing txcmux is also choosing not to put HAProxy (TCP mode) or
sslh in front of services on separate ports, or not to write the service in
Go with soheilhy/cmux.  This module starts each of them the way such a user
would configure it, in front of the same backends the benchmark's direct
side serves::

    haproxy = start_haproxy(workdir, log, web=site_port)   # TCP mode, ACLs
    sslh = start_sslh(workdir, log, http=site_port)        # sslh-select
    binary = build_go(workdir)                             # benchmarks/gocmux
    go_cmux = start_go(binary, "cmux", log, backend=sink_port)

Each returned :class:`PeerProcess` has a ``port`` to load, its CPU time so
far (``cpu_seconds``) and ``close``.  :func:`missing` says which peers are
not installed, one reason each.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

#: The peers, in the order their rows are shown.
PEERS = ("haproxy", "sslh", "go-direct", "go-cmux")
#: A port nothing listens on: backends of routes a scenario does not use.
UNUSED_PORT = 9
#: Where Debian's golang-github-soheilhy-cmux-dev puts cmux (GOPATH layout).
GOCODE = Path("/usr/share/gocode")
GO_SOURCE = Path(__file__).resolve().parent / "gocmux" / "main.go"
#: The HTTP/2 connection preface (RFC 9113, section 3.4), as HAProxy hex.
H2_PREFACE_HEX = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".hex()


class PeerError(Exception):
    """A peer that would not start, build or answer."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for peers that
    cannot listen on port 0 and say which port they got)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PeerProcess:
    """One peer process; ``port`` once it accepts connections.

    Either the peer is told its port (HAProxy, sslh) and we wait until it
    accepts, or it prints a JSON line with its port (the Go program) and
    serves until its stdin ends.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log: IO[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        log.write(f"-- {name}: {' '.join(command)}\n")
        log.flush()
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if port is None else log,
            stderr=log,
            text=True,
            env=env,
        )
        try:
            self.port = self._announced() if port is None else self._listening(port)
        except PeerError:
            self.close()
            raise

    def _announced(self) -> int:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise PeerError(f"{self.name} said nothing (see the server log)")
        port: int = json.loads(line)["port"]
        return port

    def _listening(self, port: int) -> int:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(
                    f"{self.name} exited {self.process.returncode} (see the server log)"
                )
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            time.sleep(0.05)
        raise PeerError(f"{self.name} did not listen on port {port} in 15 s")

    def cpu_seconds(self) -> float:
        """User plus system CPU the peer has used so far."""
        return cpu_seconds(self.process.pid)

    def close(self) -> None:
        """End of input and SIGTERM, then a bounded wait; killed if it lingers."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# -- which peers are here ---------------------------------------------------------


def missing() -> dict[str, str]:
    """The peers that cannot run here, each with one line saying why."""
    reasons: dict[str, str] = {}
    if shutil.which("haproxy") is None:
        reasons["haproxy"] = "haproxy is not installed (Debian: haproxy)"
    if shutil.which("sslh-select") is None:
        reasons["sslh"] = "sslh-select is not installed (Debian: sslh)"
    go_reason = ""
    if shutil.which("go") is None:
        go_reason = "go is not installed (Debian: golang-go)"
    elif not (GOCODE / "src/github.com/soheilhy/cmux").is_dir():
        go_reason = (
            "cmux is not in /usr/share/gocode (Debian: golang-github-soheilhy-cmux-dev)"
        )
    if go_reason:
        reasons["go-direct"] = reasons["go-cmux"] = go_reason
    return reasons


# -- HAProxy ------------------------------------------------------------------------


def haproxy_config(port: int, web: int, grpc: int, ssh: int) -> str:
    """HAProxy in TCP mode sharing one port as a txcmux port would.

    The first bytes decide, within ``inspect-delay``: the HTTP/2 preface goes
    to the gRPC server, ``SSH-`` to the relay's backend, HTTP/1.x (HAProxy's
    built-in ``HTTP`` ACL, ``req.proto_http``) to the Site's own port.  The
    preface cannot tell gRPC from other HTTP/2 without reading HEADERS;
    txcmux's ``grpc()`` matcher does, HAProxy's TCP mode does not.
    """
    return f"""\
global
    maxconn 4096

defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend shared
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    acl grpc req.payload(0,24) -m bin {H2_PREFACE_HEX}
    acl ssh req.payload(0,4) -m bin {b"SSH-".hex()}
    tcp-request content accept if HTTP || grpc || ssh
    use_backend grpc if grpc
    use_backend ssh if ssh
    use_backend web if HTTP

backend web
    server site 127.0.0.1:{web}

backend grpc
    server grpcio 127.0.0.1:{grpc}

backend ssh
    server relayed 127.0.0.1:{ssh}
"""


def start_haproxy(
    workdir: str,
    log: IO[str],
    web: int = UNUSED_PORT,
    grpc: int = UNUSED_PORT,
    ssh: int = UNUSED_PORT,
) -> PeerProcess:
    """HAProxy (foreground, its default threads) with :func:`haproxy_config`."""
    port = free_port()
    config = Path(workdir, f"haproxy-{port}.cfg")
    config.write_text(haproxy_config(port, web, grpc, ssh))
    return PeerProcess("haproxy", ["haproxy", "-db", "-f", str(config)], log, port)


# -- sslh ---------------------------------------------------------------------------


def sslh_config(port: int, http: int, ssh: int) -> str:
    """sslh's configuration (libconfig): its ``http`` and ``ssh`` probes.

    ``log_level: 0`` turns off sslh's line per connection, as the benchmark
    Site keeps no access log on any side.
    """
    return f"""\
foreground: true;
numeric: true;
timeout: 5;
listen: ( {{ host: "127.0.0.1"; port: "{port}"; }} );
protocols: (
    {{ name: "ssh"; host: "127.0.0.1"; port: "{ssh}"; log_level: 0; }},
    {{ name: "http"; host: "127.0.0.1"; port: "{http}"; log_level: 0; }}
);
"""


def start_sslh(
    workdir: str, log: IO[str], http: int = UNUSED_PORT, ssh: int = UNUSED_PORT
) -> PeerProcess:
    """sslh-select (one process, one thread, select(2)) with :func:`sslh_config`."""
    port = free_port()
    config = Path(workdir, f"sslh-{port}.cfg")
    config.write_text(sslh_config(port, http, ssh))
    return PeerProcess("sslh", ["sslh-select", f"-F{config}"], log, port)


# -- Go cmux ----------------------------------------------------------------------


def build_go(workdir: str) -> str:
    """Build benchmarks/gocmux in GOPATH mode into ``workdir``; the binary."""
    binary = os.path.join(workdir, "gocmux")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{workdir}/gopath:{GOCODE}",
        "GOFLAGS": "",
    }
    if "GOCACHE" not in env and "HOME" not in env:  # go needs a build cache
        env["GOCACHE"] = os.path.join(workdir, "gocache")
    try:
        done = subprocess.run(
            ["go", "build", "-o", binary, str(GO_SOURCE)],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise PeerError("go build ran over 300 s") from error
    if done.returncode != 0:
        raise PeerError(f"go build failed: {done.stderr.strip()[-300:]}")
    return binary


def start_go(
    binary: str, mode: str, log: IO[str], backend: int = UNUSED_PORT
) -> PeerProcess:
    """The Go program in ``mode`` (cmux, http or relay) on a port of its own."""
    command = [binary, "-mode", mode, "-relay-backend", str(backend)]
    return PeerProcess(f"go-{mode}", command, log)
