"""The local development broker (deploy/local-kafka/kafka.sh) driven from Python, for tests and benchmarks.

It runs a real single-node Kafka (KRaft) on free loopback ports with its own data folder; nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

KAFKA_SH = Path(__file__).resolve().parents[1] / "deploy" / "local-kafka" / "kafka.sh"


def free_port_pair() -> int:
    """A port p such that p and p+1 are both free on 127.0.0.1 (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports on 127.0.0.1")


class LocalKafka:
    """One broker on a free port pair: up (fresh), stop and start (a restart on kept data), down (wiped)."""

    def __init__(self, data_dir: str | os.PathLike | None = None, sasl_password: str | None = None) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="streamer-kafka-")) / "kafka"
        self.port = free_port_pair()
        self.env = {"KAFKA_PORT": str(self.port), "KAFKA_DATA_DIR": str(self.data_dir)}  # added to the inherited one
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_bootstrap: str | None = None
        if sasl_password is not None:  # a SASL_PLAINTEXT listener too: PLAIN and SCRAM, user "streamer"
            sasl_port = next(p for p in iter(free_port_pair, None) if p not in (self.port, self.port + 1))
            self.env.update(KAFKA_SASL_PORT=str(sasl_port), KAFKA_SASL_PASSWORD=sasl_password)
            self.sasl_bootstrap = f"127.0.0.1:{sasl_port}"

    def run(self, command: str) -> subprocess.CompletedProcess:
        """Run `kafka.sh COMMAND` for this broker; the caller checks returncode (stderr says why)."""
        # `env NAME=value ...` extends the environment the child inherits; only config.py reads it in Python.
        settings = [f"{k}={v}" for k, v in self.env.items()]
        return subprocess.run(["env", *settings, "bash", str(KAFKA_SH), command], capture_output=True, text=True)

    def _checked(self, command: str) -> None:
        proc = self.run(command)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed:\n{proc.stderr[-4000:]}")

    def up(self) -> str:
        """Start a fresh broker; its bootstrap address."""
        self._checked("up")
        return self.bootstrap

    def stop(self) -> None:
        """Stop the broker, keeping its data."""
        self._checked("stop")

    def start(self) -> None:
        """Start the stopped broker again on its kept data."""
        self._checked("start")

    def pid(self) -> int | None:
        """The running broker's process id (None when it is not running): for benchmarks that count its CPU."""
        try:
            pid = int((self.data_dir / "broker.pid").read_text().strip())
            os.kill(pid, 0)  # the file outlives the broker after stop
        except (OSError, ValueError):
            return None
        return pid

    def down(self) -> None:
        """Stop the broker and delete its data."""
        self.run("down")
