"""A Dask cluster on loopback for the cluster-scan tests and benchmark: ``dask scheduler``
and ``dask worker`` processes on 127.0.0.1, each in its own session, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class DaskCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, stopped by PID."""

    def __init__(self, tmp: Path, workers: int = 2, pythonpath: Path | None = None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.env = dict(os.environ)
        if pythonpath is not None:  # workers import this checkout's apiwatch
            self.env["PYTHONPATH"] = str(pythonpath)
        self.procs: list[subprocess.Popen] = []
        self._start(["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                     "--no-dashboard"], "scheduler")  # fmt: skip
        for i in range(workers):
            self._start(["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                         "--no-dashboard", "--name", f"w{i}", "--memory-limit", "2GiB"], f"w{i}")  # fmt: skip
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                [shutil.which("dask"), *args],
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )  # fmt: skip
        )

    def worker_pids(self) -> list[int]:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            return list(client.run(os.getpid).values())

    def stop(self) -> None:
        for p in reversed(self.procs):  # workers (their nannies) first, then the scheduler
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
