"""Servers the benchmark starts in child processes, bound to 127.0.0.1.

`mlflow-trackio ui` serves MLflow's REST API over a Trackio directory;
`trackio show` is a Trackio server that `trackio+http://` writes to with a
write token. Each is started on a free port, awaited until it answers, and
stopped with SIGTERM (SIGKILL if it ignores it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_START_TIMEOUT_S = 90
_STOP_TIMEOUT_S = 15


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _console_script(name: str) -> str:
    # The venv's script, next to the interpreter that runs the benchmark.
    script = Path(sys.executable).with_name(name)
    if not script.exists():
        raise RuntimeError(
            f"{script} is missing: install the package with its server extra "
            "(pip install -e '.[server]') in this environment."
        )
    return str(script)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class Server:
    """One server process, its port and its log file."""

    def __init__(
        self, name: str, port: int, command: list[str], env: dict[str, str]
    ) -> None:
        self.name = name
        self.port = port
        self.command = command
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path, health_path: str) -> None:
        """Start the process and return once `health_path` answers 200."""
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command, stdout=output, stderr=output, env=self.env
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n"
                    f"{log.read_text()[-2000:]}"
                )
            if _answers(self.url + health_path):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer {health_path} in {_START_TIMEOUT_S} s; "
            f"see {log}."
        )

    def stop(self) -> None:
        """Stop the process, politely first; safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _child_environment(**variables: str) -> dict[str, str]:
    # The benchmark's own MLflow settings must not reach the servers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(variables)
    return env


def start_mlflow_server(directory: Path, workers: int) -> Server:
    """Start `mlflow-trackio ui` over `directory` with `workers` processes."""
    port = free_port()
    command = [_console_script("mlflow-trackio"), "ui", "--dir", str(directory)]
    command += ["--port", str(port), "--workers", str(workers)]
    server = Server("mlflow-trackio ui", port, command, _child_environment())
    server.start(directory.parent / f"{directory.name}.log", "/health")
    return server


def start_trackio_server(directory: Path, token: str) -> Server:
    """Start `trackio show` headless over `directory`, writable with `token`."""
    port = free_port()
    env = _child_environment(
        TRACKIO_DIR=str(directory),
        TRACKIO_WRITE_TOKEN=token,
        GRADIO_SERVER_PORT=str(port),
        # One port only: a port taken meanwhile must fail, not move the server.
        GRADIO_NUM_PORTS="1",
        # `trackio show` opens a browser; `true` is one that does nothing.
        BROWSER="true",
    )
    command = [_console_script("trackio"), "show", "--host", "127.0.0.1"]
    server = Server("trackio show", port, command, env)
    server.start(directory.parent / f"{directory.name}.log", "/version")
    return server
