"""Files that are never half-written and caches that are never trusted blindly. At the bottom of
the import graph beside schema/: models/ and training/ both cache things.

- write_atomically: a temporary file beside the target, flushed, renamed over it.
- build_once: a cache directory built under a file lock (two runs building the same entry at
  once: one builds, the other waits and reuses it), in a temporary directory renamed into place,
  sealed with a manifest of every file's size and SHA-256 and verified on every later use; an
  entry that fails verification (truncated, corrupted, half-copied) is rebuilt with a warning.
- code_digest: a hash of ptlab's own source, part of every cache key (an entry made by other code
  is not reused).
"""
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, flush it to disk, then rename it over `path`: a reader
    sees the old file or the new one, never half of one (a kill or a full disk mid-write)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


PACKAGES = ("algorithms", "models", "parallel", "rewards", "storage", "tasks", "training")  # under ptlab/
_CODE: dict[tuple, str] = {}


def code_digest(*files: Path) -> str:
    """SHA-256 (16 hex digits) of the source that computes a cached entry: `files` if given, else
    every .py file of ptlab's packages. Read once per process. A cache key holds it, so code that
    would compute other numbers (an edit, another commit, a dirty checkout) makes its own entry."""
    key = tuple(map(str, files))
    if key not in _CODE:
        package_dir = Path(__file__).resolve().parent.parent  # ptlab/
        root = package_dir.parent
        paths = sorted(files) if files else sorted(path for package in PACKAGES for path in (package_dir / package).rglob("*.py"))
        sha = hashlib.sha256()
        for path in paths:
            sha.update(str(Path(path).resolve().relative_to(root) if Path(path).resolve().is_relative_to(root)
                           else Path(path).name).encode())
            sha.update(Path(path).read_bytes())
        _CODE[key] = sha.hexdigest()[:16]
    return _CODE[key]


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (created if need be), held until the block ends or the process dies.
    The file is removed when the block ends, normally or by an exception or signal, so a cache holds
    only what was built (a process killed with -9 leaves it: harmless, the next build reuses it). A
    waiter that wakes holding the lock of a file since removed tries again on the path's new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while held: no other process can hold this file's lock now
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def contents(directory: Path, manifest: str) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of every file under `directory` but the manifest."""
    return {str(path.relative_to(directory)): {"bytes": path.stat().st_size, "sha256": digest(path)}
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != manifest}


def is_sealed(directory: Path, manifest: str) -> bool:
    """True when `directory` holds exactly the files its manifest lists, with their sizes and hashes."""
    try:
        record = json.loads((directory / manifest).read_text())
        return record["files"] == contents(directory, manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_once(target: Path, build: Callable[[Path], dict], manifest: str, what: str) -> Path:
    """`target`, built by `build(directory) -> record` if no verified copy exists. The record (what
    was built, how long it took) is stored in the manifest with the files' sizes and hashes."""
    target = Path(target)
    with file_lock(target.with_name(target.name + ".lock")):
        if is_sealed(target, manifest):
            return target
        if target.exists():
            warnings.warn(f"{what} under {target} is incomplete or corrupted (it does not match its manifest "
                          f"{manifest}): rebuilding it", stacklevel=2)
            shutil.rmtree(target)
        partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            record = build(partial)
            record["files"] = contents(partial, manifest)
            write_atomically(partial / manifest, json.dumps(record, indent=2))
            os.rename(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target
