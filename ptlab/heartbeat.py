"""A line at least every 30 seconds when stdout is not a terminal (a beat after 25 s of silence).

Under nohup, a batch job or SLURM, stdout is a file: Lightning's progress bar draws nothing there,
and a phase with nothing to print (a warm start between its checks, a model's conversion, an
evaluation, a long step) looks like a hang. `start()` wraps sys.stdout to note when anything was
last written, and a daemon thread prints the current phase, its time so far and its progress
whenever nothing was written for `every` seconds:

    reference evaluation: 25 s so far (greedy answers 0-200 of 200)
    training: 50 s so far (step 3/16)

Code marks its phases with `with phase("reference evaluation", progress=...)`; outside a started
heartbeat (a terminal, tests) a phase costs nothing.
"""
import sys
import threading
import time
from contextlib import contextmanager


class _Stdout:
    """sys.stdout, noting the time of each write."""

    def __init__(self, stream, beat):
        self.stream, self.beat = stream, beat

    def write(self, text):
        if text:
            self.beat.last_write = time.monotonic()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Heartbeat:
    def __init__(self):
        self.last_write = time.monotonic()
        self.phases: list[tuple[str, float, object]] = []  # (name, start, progress callable or None)
        self.thread, self.every, self.stopped = None, 30.0, threading.Event()

    def start(self, every: float = 30.0, force: bool = False) -> None:
        """Begin beating (once per process) unless stdout is a terminal (`force`: even then)."""
        if self.thread is not None or (sys.stdout.isatty() and not force):
            return
        self.every, self.last_write = every, time.monotonic()
        sys.stdout = _Stdout(sys.stdout, self)
        self.thread = threading.Thread(target=self._run, name="ptlab-heartbeat", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is None:
            return
        self.stopped.set()
        self.thread.join()
        if isinstance(sys.stdout, _Stdout):
            sys.stdout = sys.stdout.stream
        self.thread, self.phases = None, []
        self.stopped.clear()

    def _run(self) -> None:
        while not self.stopped.wait(min(1.0, self.every / 4)):
            if self.phases and time.monotonic() - self.last_write >= self.every:
                name, start, progress = self.phases[-1]
                try:
                    detail = progress() if progress else None
                except Exception:  # noqa: BLE001 - a progress callable must never end the run
                    detail = None
                print(f"{name}: {time.monotonic() - start:.0f} s so far" + (f" ({detail})" if detail else ""), flush=True)

    @contextmanager
    def phase(self, name: str, progress=None):
        self.phases.append((name, time.monotonic(), progress))
        try:
            yield
        finally:
            self.phases.pop()


HEARTBEAT = Heartbeat()
phase = HEARTBEAT.phase
