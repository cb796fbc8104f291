"""The house: one namespace (a user's file of any name cannot stand in for ptlab's modules or the
libraries it imports), import layers and no import circles (import-linter's contracts in
pyproject.toml), and a policy loss added as one unit plus one config (docs/usage.md's example)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ptlab's old top-level packages, new names, and libraries ptlab imports: none may be taken from the user's folder
SHADOWS = ("models", "rewards", "training", "tasks", "schema", "peft", "safetensors", "algorithms", "checks", "errors", "run")
SMALL = ["task=exact", "model.lora.r=4", "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none"]


def shadowed_folder(folder: Path) -> Path:
    """A folder of the user's holding a file named like each of SHADOWS, each failing loudly if imported."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHADOWS:
        (folder / f"{name}.py").write_text(f"raise ImportError('the user\\'s {name}.py was imported')\n")
    return folder


def run_python(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PTLAB_CACHE_DIR=str(cache), WANDB_MODE="offline")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_script_next_to_files_named_like_ptlab_and_its_libraries_imports_ptlab_and_trains(tmp_path):
    folder = shadowed_folder(tmp_path / "project")
    overrides = [*SMALL, f"hydra.run.dir={tmp_path / 'run'}"]
    (folder / "train.py").write_text(
        "import json\nimport ptlab\n"
        f"summary = ptlab.train({overrides!r})\n"
        "print(json.dumps({'status': summary['status'], 'steps': summary['steps']}))\n")
    proc = run_python([str(folder / "train.py")], folder, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"status": "completed", "steps": 2}
    assert (tmp_path / "run" / "policy" / "model.safetensors").exists()  # written by safetensors (the library), LoRA merged


def test_a_run_whose_config_dir_holds_the_same_files_trains_with_an_algorithm_of_that_folder(tmp_path):
    """The --config-dir folder stays importable (its own module is found) but comes after the libraries."""
    folder = shadowed_folder(tmp_path / "my_conf")
    (folder / "algorithm").mkdir()
    (folder / "my_algos.py").write_text(
        "from ptlab.algorithms.base import Algorithm\n\n\n"
        "class Frozen(Algorithm):\n"
        "    def weights(self, logprobs, rollout):\n"
        "        return 0.0 * rollout.response_mask.to(logprobs.dtype), {}\n")
    (folder / "algorithm" / "frozen.yaml").write_text("_target_: my_algos.Frozen\ngroup_size: ${sampler.group_size}\n")
    proc = run_python([str(ROOT / "run.py"), "--config-dir", str(folder), "algorithm=frozen", *SMALL,
                       f"hydra.run.dir={tmp_path / 'run'}"], folder, tmp_path / "cache")  # launched from the user's folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["algorithm"] == "frozen" and summary["steps"] == 2
    # zero weights: the policy did not move, so the exact KL to pi* is the reference's
    assert summary["exact/kl_to_optimum"] == pytest.approx(summary["ref/exact/kl_to_optimum"], abs=1e-7)


def test_the_import_contracts_hold():
    """lint-imports on pyproject.toml's contracts: the layers (entry points > bench > sweeps > checks >
    training > tasks > models | rewards | algorithms > errors | paths | heartbeat | storage | parallel),
    every module of ptlab in one of them, and no import circle at any depth."""
    proc = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_an_upward_import_and_a_circle_break_the_contracts(tmp_path):
    """The contracts can fail: in a copy of ptlab, the bottom layer importing the training layer, and two
    modules of the model layer importing each other, are each reported."""
    shutil.copytree(ROOT / "ptlab", tmp_path / "ptlab", ignore=shutil.ignore_patterns("__pycache__", "experiment", "regime"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "ptlab" / "errors.py", "a") as f:
        f.write("\n\ndef _upward():\n    from ptlab.training import module  # noqa: F401\n")
    with open(tmp_path / "ptlab" / "models" / "options.py", "a") as f:
        f.write("\n\ndef _circle():\n    from ptlab.models import build  # noqa: F401 - build imports options\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(["lint-imports"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "ptlab.errors is not allowed to import ptlab.training" in proc.stdout
    assert re.search(r"No cycles are allowed in ptlab\.models", proc.stdout), proc.stdout[-3000:]


def test_the_docs_new_policy_loss_is_one_file_and_one_config_and_the_gradient_tests_run_it(tmp_path):
    """docs/usage.md's dual-clip example, added to a copy of the repository as the docs say (one file in
    ptlab/algorithms/policy_losses/, one config): the gradient tests collect and pass it with no other
    change, and a run trains with it."""
    for part in ("ptlab", "conf", "tests"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "run.py"):
        shutil.copy(ROOT / part, tmp_path / part)
    section = (ROOT / "docs" / "usage.md").read_text().split("## A new policy loss", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n# (ptlab/\S+)\n(.*?)```", section, re.S)
    config = re.search(r"\n    # (conf/\S+):[^\n]*\n((?:    [^\n]*\S[^\n]*\n)+)", section)
    (tmp_path / code.group(1)).write_text(code.group(2))
    (tmp_path / config.group(1)).write_text("\n".join(line[4:] for line in config.group(2).splitlines()) + "\n")
    env = dict(os.environ, PTLAB_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline")
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gradients.py",
                            "-k", "dual_clip"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0 and re.search(r"\b2 passed\b", tests.stdout), tests.stdout[-3000:]
    name = Path(config.group(1)).stem
    overrides = [f"algorithm={name}", *SMALL[:1], *SMALL[2:], f"hydra.run.dir={tmp_path / 'run'}"]  # no LoRA
    run = subprocess.run([sys.executable, "run.py", *overrides], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algorithm"] == name and summary["steps"] == 2 and summary["status"] == "completed"
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "policy_loss: dual_clip" in resolved and "clip_ratio_c: 3.0" in resolved


def test_a_target_by_its_former_name_or_behind_a_library_of_its_name_says_what_to_do(tmp_path, monkeypatch):
    from ptlab.checks.targets import import_error

    assert import_error("tasks.files.FileTask") == ("No module named 'tasks' (ptlab's modules are under ptlab.: "
                                                    "ptlab.tasks.files.FileTask)")
    assert import_error("ptlab.tasks.files.FileTask") is None
    (tmp_path / "peft.py").write_text("def score(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    monkeypatch.setenv("PTLAB_USER_PATH", str(tmp_path))  # a --config-dir folder, as ptlab.paths.add_user_folder sets it
    reason = import_error("peft.score")
    assert f"your {tmp_path / 'peft.py'} is not the module imported: peft is found first at " in reason, reason
