"""A real BigQuery REST emulator (bqemulator 1.4) on loopback, for the adapter's tests.

bqemulator cannot live in the project's virtualenv: it pins sqlglot<30.12 while fakesnow
needs sqlglot~=30.22. It gets its own venv under `.cache/bqemulator-venv` (created on
first use with pip, then reused), and runs as a subprocess from there; the tests talk
to it only over HTTP, through the real google-cloud-bigquery client.

Two more things it needs that pip alone does not give it, both set up here:
- DuckDB's `spatial` extension, which it INSTALLs from the network at start-up (there is
  no network here): the `duckdb-extension-spatial` wheel ships the binary, and it is
  installed into the emulator's own HOME before the first start, with duckdb pinned to
  the wheel's version (1.5.5);
- numpy (its built-in UDFs need it; not a declared dependency).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "bqemulator-venv"
HOME = VENV / "home"
READY = VENV / ".sluice-ready"
PACKAGES = [
    "bqemulator==1.4.0",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "duckdb-extensions==1.5.5",
    "numpy",
]
PROJECT = "sluice-test"


def _bin(name: str) -> Path:
    return VENV / "bin" / name


def ensure_venv() -> None:
    """Create the emulator's venv once (about a minute); a marker proves it finished."""
    if READY.exists():
        return
    # No marker: absent, or left half-made by an interrupted run (a venv without pip).
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(_bin("python")), "-m", "pip", "install", "--quiet", *PACKAGES],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(_bin("python")),
            "-c",
            "import duckdb; from duckdb_extensions import import_extension; "
            "import_extension('spatial', con=duckdb.connect())",
        ],
        check=True,
        env={**os.environ, "HOME": str(HOME)},
    )
    READY.write_text("ok\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def running_emulator(log_path: Path, timeout: float = 90.0) -> Iterator[str]:
    """Start bqemulator on a free loopback port; yields its endpoint URL; stops it."""
    ensure_venv()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(_bin("bqemulator")),
                "start",
                "--rest-host",
                "127.0.0.1",
                "--rest-port",
                str(port),
                "--grpc-port",
                "0",
                "--ephemeral",
                "--project",
                PROJECT,
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(HOME), "BQEMU_LOG_LEVEL": "warning"},
        )
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"bqemulator did not start on {url}:\n{tail}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
