"""An output directory belongs to one run. A run locks it for its lifetime (two processes given the
same directory: the second is refused); a rerun of the same config in it does not repeat a
completed run, resumes an unfinished one from its last checkpoint (or starts it again if it has
none); a different config is refused, so no run ever appends to another's files."""
import fcntl
import json
import sys
import zipfile
from pathlib import Path

from omegaconf import OmegaConf

from ptlab.errors import ConfigError
from ptlab.paths import unplaced

RUN_FILES = ("summary.json", "samples.jsonl")  # what a run writes itself (loggers make their own versions)


class OutputDirectoryTaken(ConfigError):
    """The directory belongs to another run: nothing may be written to it, not even a failure."""


NOT_COMPARED = ("hydra", "resume")  # keys a rerun of the same run may change
CLAIMED: set[Path] = set()  # the directories this process has claimed for its runs


def checkpoint_dir(cfg, output_dir) -> Path:
    """Where the run's checkpoints go: callbacks.checkpoint.dirpath, or <output_dir>/checkpoints when
    callbacks.checkpoint is null (no periodic checkpoints; a signal still writes one there)."""
    checkpoints = cfg.callbacks.get("checkpoint")
    return Path(checkpoints.dirpath) if checkpoints else Path(output_dir) / "checkpoints"


def holds(output_dir) -> bool:
    """Whether this process claimed `output_dir` for a run (so may write its failure there)."""
    return Path(output_dir).absolute() in CLAIMED


def claim(output_dir: Path, cfg, checkpoint: Path):
    """Lock `output_dir` for this run. Returns (lock handle, summary of this config's completed run
    there or None, `checkpoint` if an unfinished run of this config left it, else None); close the
    handle when the run ends."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / ".ptlab.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputDirectoryTaken(f"hydra.run.dir={output_dir} is in use by another running job; "
                                   "give each run its own directory") from None
    previous = output_dir / "config.yaml"
    if previous.exists():
        try:
            old = OmegaConf.to_container(OmegaConf.load(previous))
            assert isinstance(old, dict)
        except Exception as error:  # noqa: BLE001 - YAML's and OmegaConf's errors: which run it was is unknown
            handle.close()
            reason = " ".join(str(error).split())[:160] or "not a mapping"
            raise OutputDirectoryTaken(f"hydra.run.dir={output_dir} holds a config.yaml that cannot be read ({reason}); "
                                       "nothing was changed: restore the file, or choose another directory") from None
        old, new = unplaced(old), unplaced(resolved(cfg))  # a run from before ptlab's modules moved under ptlab.
        changed = differences({k: v for k, v in old.items() if k not in NOT_COMPARED},
                              {k: v for k, v in new.items() if k not in NOT_COMPARED})
        if changed:
            handle.close()
            raise OutputDirectoryTaken(f"hydra.run.dir={output_dir} holds a run of another config ({changed[0]}); "
                                       "choose another directory or delete that one")
        summary = read_summary(output_dir / "summary.json")
        CLAIMED.add(output_dir.absolute())
        if summary and summary.get("status") == "completed":
            return handle, summary, None
        if checkpoint.is_file():
            reason = damaged(checkpoint)
            if reason is None:
                (output_dir / "summary.json").unlink(missing_ok=True)
                return handle, None, checkpoint
            aside = checkpoint.with_name(checkpoint.name + ".damaged")
            checkpoint.replace(aside)
            print(f"warning: {checkpoint} cannot be read ({reason}): moved to {aside.name}; the run starts over",
                  file=sys.stderr, flush=True)
    CLAIMED.add(output_dir.absolute())
    for name in RUN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    return handle, None, None


def damaged(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be read, or None. Lightning writes a checkpoint as torch.save's zip
    archive: a truncated or corrupted file fails to open or fails a record's CRC (read through once,
    nothing unpickled)."""
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return None if bad is None else f"its record {bad} fails its checksum"


def resolved(cfg) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - as write_config: a config that does not resolve is kept as given
        return OmegaConf.to_container(cfg)


def differences(old, new, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix[:-1]}: {short(old)} -> {short(new)}"]


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_summary(path: Path) -> dict | None:
    """A summary.json, or None when it is missing, empty or not JSON (a run killed while writing)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
