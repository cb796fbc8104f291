"""Cores shared with other work. Two torch processes whose threads add up to more than the machine's
cores slow each other ten times or more (each thread spins at OpenMP barriers waiting for one that
is descheduled): on 2 cores, two runs of 2 threads each took over 20 minutes for an 800-step warm
start that takes 2.5 with 1 thread each. A local parallel sweep (hydra/launcher=joblib) gets its
share from joblib (each worker's threads = cores // jobs); a run started beside other busy work is
warned at its start."""
import os
import sys
import time


def others_running(readings: int = 5, interval: float = 0.05) -> int | None:
    """Threads of other processes ready to run right now (/proc/stat's procs_running, less the one
    reading it): the fewest of a few readings, so a moment's blip does not count. None where
    /proc/stat is not (not Linux)."""
    counts = []
    for _ in range(readings):
        try:
            with open("/proc/stat") as stat:
                counts.append(next(int(line.split()[1]) for line in stat if line.startswith("procs_running")))
        except (OSError, StopIteration, ValueError):
            return None
        time.sleep(interval)
    return max(min(counts) - 1, 0)


def oversubscription(threads: int, cores: int, others: int | None) -> str | None:
    """The warning for a run of `threads` threads on `cores` cores beside `others` running threads, or None."""
    if others is None or others + threads <= cores:
        return None
    return (f"warning: {others} other thread(s) are running on this machine's {cores} cores and this run uses "
            f"{threads}: threads sharing cores wait at OpenMP barriers and can make a run 10x slower; run one at "
            f"a time, or give each run its share (OMP_NUM_THREADS={max(cores // 2, 1)} for two)")


def warn_if_oversubscribed() -> None:
    import torch

    message = oversubscription(torch.get_num_threads(), os.cpu_count() or 1, others_running())
    if message:
        print(message, file=sys.stderr, flush=True)
