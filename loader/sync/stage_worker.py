"""A stage in a process of its own: `python -m loader.sync.stage_worker` reads one
pickled (StageOrder, ReadOptions, StagingArea) on stdin, stages it and answers the
StagedPartition (or the error) on stdout. A plain subprocess, as the archive readers
are: nothing of the parent (its __main__, connections, threads) is imported or forked."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from loader.encode.file_reader import ReadOptions
from loader.sync.staging import StagedPartition, StageOrder, StagingArea, stage


class StageWorkers:
    """Up to `workers` stage processes at once; `submit` returns the stage's future."""

    def __init__(self, workers: int) -> None:
        self._threads = ThreadPoolExecutor(max_workers=max(1, workers))
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def submit(
        self, order: StageOrder, options: ReadOptions, area: StagingArea
    ) -> Future[StagedPartition]:
        return self._threads.submit(self._run, order, options, area)

    def _run(self, order: StageOrder, options: ReadOptions, area: StagingArea) -> StagedPartition:
        with self._lock:
            if self._stopped:
                raise RuntimeError("stopped")
            process = subprocess.Popen(
                [sys.executable, "-m", "loader.sync.stage_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._running.add(process)
        try:
            request = pickle.dumps((order, options, area), protocol=pickle.HIGHEST_PROTOCOL)
            answer, _ = process.communicate(request)
        finally:
            with self._lock:
                self._running.discard(process)
        if process.returncode != 0 or not answer:
            raise RuntimeError(
                f"the stage of partition {order.label} exited with code {process.returncode}"
            )
        result = pickle.loads(answer)
        if isinstance(result, BaseException):
            raise result
        return result

    def stop(self) -> None:
        """Kill stages still running: their folders have no manifest, so nothing ever
        commits them, and the next commit of their day deletes them."""
        with self._lock:
            self._stopped = True
            for process in self._running:
                process.kill()
        self._threads.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._threads.shutdown(wait=True)


def _serve(requests: Sequence[bytes]) -> None:
    order, options, area = pickle.loads(b"".join(requests))
    try:
        answer: object = stage(order, options, area, readers=0)
    except Exception as exc:  # noqa: BLE001 - re-raised in the committing process
        try:
            pickle.dumps(exc)
            answer = exc
        except Exception:  # noqa: BLE001 - any failure to pickle
            answer = RuntimeError(f"{type(exc).__name__}: {exc}")
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()


if __name__ == "__main__":
    # Ctrl-C reaches the process group: the committing process alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from loader.sync.stage_worker import _serve as serve

    serve([sys.stdin.buffer.read()])
