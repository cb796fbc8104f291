"""How a job that does not complete ends (run.py's `main`).

- Interrupted (SIGTERM, SIGINT): summary.json says `status: interrupted`, a checkpoint is kept, and the
  process (a sweep included) ends with exit code 128 + the signal's number.
- Failed: summary.json holds the error line (only in a directory this run claimed). Bad input
  (errors.ConfigError) and a run that cannot go on (errors.RunStopped, a full disk) print one line and
  exit with 2 and 1; anything else is a bug, and raises with its traceback. In a multirun the other
  jobs still run, and Hydra reports this job's one line after the last (JobFailed).
"""
import errno
import sys
import traceback
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

from ptlab import parallel
from ptlab.errors import ConfigError, RunStopped, one_line
from ptlab.training.outputs import checkpoint_dir, holds
from ptlab.training.summary import write_failure


@contextmanager
def exit_on_failure(cfg):
    """The body is one job; an exception out of it ends the job as the module docstring says."""
    from ptlab.training.interrupts import Interrupted

    try:
        yield
    except Interrupted as interrupted:  # summary.json says so; the exit code too, and a sweep stops
        output_dir = HydraConfig.get().runtime.output_dir
        last = checkpoint_dir(cfg, output_dir) / "last.ckpt"
        kept = "summary and checkpoint" if last.exists() else "summary (no checkpoint: stopped before a step ended)"
        print(f"error: {interrupted}; {kept} in {output_dir}", file=sys.stderr, flush=True)
        sys.exit(128 + interrupted.signum)
    except Exception as error:
        failed(cfg, error)


def failed(cfg, error: Exception) -> None:
    hydra_cfg = HydraConfig.get()
    if holds(hydra_cfg.runtime.output_dir) and parallel.rank() == 0:  # only into a directory this run claimed
        try:
            write_failure(hydra_cfg.runtime.output_dir, cfg, dict(hydra_cfg.runtime.choices), error)
        except OSError as unwritten:  # the disk that failed the run may fail this write too
            if not disk_full(unwritten):
                raise
    expected = isinstance(error, (ConfigError, RunStopped)) or disk_full(error)
    if disk_full(error):
        where = f"writing {error.filename}" if error.filename else "writing the run's files"
        error = RunStopped(f"{error.strerror} {where}: the disk is full or a file-size limit (ulimit -f) was reached; "
                           f"files are written whole or not at all: free space and run the same command again")
    if hydra_cfg.mode == RunMode.MULTIRUN:  # the other jobs still run; Hydra then raises this job's error
        if not expected:
            traceback.print_exc()  # a bug: its traceback where it happened, among this job's lines
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        raise JobFailed(f"error: job {hydra_cfg.job.num} failed ({one_line(error)}); its summary.json is in "
                        f"{hydra_cfg.runtime.output_dir}; the sweep's other jobs ran") from None
    if not expected:
        raise error
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(2 if isinstance(error, ConfigError) else 1)


def disk_full(error: BaseException) -> bool:
    """An OSError of a full disk, a quota or a file-size limit, anywhere in the run's writes."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class JobFailed(CompactHydraException):
    """A sweep's failed job, as Hydra reports it after the sweep: one line, no traceback (Hydra prints
    a CompactHydraException's message only; the job's own lines came when it failed)."""
