"""A real `idstitch serve` in a subprocess on a free port, for the end-to-end tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.http.conftest import SPACE, TOKEN, WRITE_KEY

CONFIG = f"""space_id = "{SPACE}"

[storage]
url = "sqlite:///{{db}}"

[[sources]]
id = "web"
write_key = "{WRITE_KEY}"

[[access_tokens]]
token = "{TOKEN}"
"""


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "idstitch.toml"
    path.write_text(CONFIG.format(db=(directory / "idstitch.db").as_posix()))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process; `stop()` sends SIGTERM, `kill()` SIGKILL."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def start(
    config: Path | None,
    cwd: Path,
    log: Path,
    port: int | None = None,
    out: Path | None = None,
    own_group: bool = False,
) -> Server:
    """`idstitch serve` with stderr (the JSON logs) to `log`, stdout to `out` or `log`; with
    `own_group`, in a process group of its own (as a shell's foreground job), so a test can
    signal the whole group as a terminal's Ctrl-C does."""
    port = port or free_port()
    args = [sys.executable, "-m", "idstitch", "serve", "--port", str(port)]
    if config is not None:
        args += ["--config", str(config)]
    with log.open("ab") as err, (out or log).open("ab") as std:
        proc = subprocess.Popen(args, cwd=cwd, stdout=std, stderr=err, start_new_session=own_group)
    return Server(proc, port, log)


@contextmanager
def running(directory: Path, port: int | None = None, own_group: bool = False) -> Iterator[Server]:
    """A server on `directory`'s config (written if missing), stopped by SIGKILL if the test
    left it running."""
    config = directory / "idstitch.toml"
    if not config.exists():
        write_config(directory)
    server = start(config, directory, directory / "server.log", port, own_group=own_group)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()
