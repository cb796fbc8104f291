"""Signals end a run cleanly. SIGTERM (a timeout, a scheduler's preemption, `docker stop`) or SIGINT
(Ctrl-C) during training lets the current optimiser step finish, writes checkpoints/last.ckpt and
raises Interrupted; run.py then writes summary.json with `status: interrupted` and exits with
128 + the signal's number, so neither a shell nor a sweep mistakes it for success. Outside
training (warm start, validation, export), or at a second signal, it stops at once.

Lightning installs its own SIGTERM handler when fit starts: it sets `trainer.received_sigterm` and its
loops then raise SIGTERMException (a SystemExit with code 0) at their next check. A signal landing
between this callback's batch-end hook and Lightning's check would end the run with exit code 0, no
summary and no checkpoint. In one process StopOnSignal therefore takes SIGTERM back once training
starts; under DDP Lightning's handler stays (it forwards the signal to the other ranks), and run.py
turns its exception into Interrupted."""
import signal
from pathlib import Path

import lightning as L

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A run stopped by a signal (a BaseException, like KeyboardInterrupt: no `except Exception` eats it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopOnSignal(L.Callback):
    """Install with `with StopOnSignal(...) as stop:` around a run and pass it to the Trainer."""

    def __init__(self, checkpoint_dir: str | Path | None = None):
        self.checkpoint = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
        self.received: int | None = None
        self.training = False
        self.stopping = False
        self.previous = {}

    def __enter__(self):
        self.previous = {signum: signal.signal(signum, self.handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame) -> None:
        if self.training and self.received is None:
            self.received = signum  # stop at the end of this optimiser step
            return
        raise Interrupted(signum)

    def on_train_start(self, trainer, pl_module) -> None:
        self.training = True
        if trainer.world_size == 1:  # Lightning's handler, installed after __enter__, would race this one
            signal.signal(signal.SIGTERM, self.handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None:
            return
        self.training = False
        if self.checkpoint is not None:
            trainer.save_checkpoint(self.checkpoint)
        self.stopping = True  # raised at the next hook: Lightning logs this step's metrics after this one

    def stop_if_stopping(self, *args) -> None:
        if self.stopping:
            self.stopping = False
            raise Interrupted(self.received)

    on_train_batch_start = on_validation_start = on_train_epoch_end = stop_if_stopping

    def on_train_end(self, trainer, pl_module) -> None:
        self.training = False
        self.stop_if_stopping()
