"""Where ptlab's files are, and where the user's go on sys.path. At the bottom of the import graph.

ptlab's modules are all under `ptlab.`; the user's own modules (a reward in the folder of their
script, in the working directory or in a --config-dir) are found after ptlab and the libraries it
imports, so a user's `models.py`, `peft.py` or `safetensors.py` is importable by its own name and
never stands in for a library.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: conf/, docs/, run.py
CONF_DIR = ROOT / "conf"
USER_PATH = "PTLAB_USER_PATH"  # folders of the user's own modules (a --config-dir), for a launcher's workers


def user_folders_last() -> None:
    """Move the user's folders after everything else on sys.path: the folder of the script being run
    and the working directory (Python puts one of them first), and the folders in PTLAB_USER_PATH.
    ptlab/__init__.py calls it, so it runs before ptlab imports any library."""
    script = os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None
    users = {os.getcwd(), script} - {None}
    moved = [entry for entry in sys.path if entry in ("", ".") or os.path.abspath(entry) in users]
    sys.path[:] = [entry for entry in sys.path if entry not in moved] + moved
    for folder in filter(None, os.environ.get(USER_PATH, "").split(os.pathsep)):
        if folder not in sys.path:
            sys.path.append(folder)


def add_user_folder(folder: str | Path) -> None:
    """Make a folder of the user's modules importable, last on sys.path, here and in every process
    this one starts (a launcher's jobs, Lightning's other ranks)."""
    path = str(Path(folder).expanduser().resolve())
    if path not in sys.path:
        sys.path.append(path)
    folders = [*filter(None, os.environ.get(USER_PATH, "").split(os.pathsep)), path]
    os.environ[USER_PATH] = os.pathsep.join(dict.fromkeys(folders))


def user_config_dir(args: list[str]) -> str | None:
    """The folder of `--config-dir DIR` (or -cd DIR, --config-dir=DIR), if given."""
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(("--config-dir=", "-cd=")):
            return arg.split("=", 1)[1]
    return None


def import_user_folder(args: list[str]) -> None:
    """A --config-dir folder is importable: a `_target_: my_reward.correct` beside the user's YAML files
    resolves, in this process and in the jobs a launcher starts (after the libraries: add_user_folder)."""
    folder = user_config_dir(args)
    if folder is not None:
        add_user_folder(folder)


def unplaced(node):
    """A config (a dict) with every `_target_` named without its `ptlab.` prefix: what a run computes, not
    where its code lives. ptlab's modules moved under `ptlab.` after runs and results pages were made;
    a run's config.yaml from before and the same config now compare (and hash) equal."""
    if isinstance(node, dict):
        return {key: value.removeprefix("ptlab.") if key == "_target_" and isinstance(value, str) else unplaced(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [unplaced(value) for value in node]
    return node
