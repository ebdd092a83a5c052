"""`edgederm serve` as a child process: what the browser test, the load benchmark and the
screenshot script start, on a free loopback port, and wait for until it answers."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with ServerProcess(bundle, data_dir) as server: ... server.url ...`; `kill()` is a SIGKILL (a crash)."""

    def __init__(self, bundle: Path, data_dir: Path, port: int | None = None, timeout: float = 60.0):
        self.bundle, self.data_dir, self.port, self.timeout = Path(bundle), Path(data_dir), port or free_port(), timeout
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None
        self.output = None       # the server's stdout and stderr: a file, since a pipe nobody reads fills and blocks it

    def start(self) -> "ServerProcess":
        self.output = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgederm", "serve", "--bundle", str(self.bundle), "--port", str(self.port),
             "--data-dir", str(self.data_dir)], stdout=self.output, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.output.seek(0)
                raise RuntimeError(f"edgederm serve exited {self.process.returncode}: {self.output.read()}")
            try:
                with urllib.request.urlopen(self.url + "api/info", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"edgederm serve did not answer on {self.url} within {self.timeout:.0f} s")

    def kill(self) -> None:
        """No clean shutdown: what a power cut or an OOM kill does."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.output is not None:
            self.output.close()
