"""Results pages and the replication command: every shipped experiment declares its claims and
seed count; a page is generated from a real multirun with its provenance and refused for runs of
another config; a shipped page whose experiment config has changed is flagged; a replication on new
seeds runs the claims' configurations and lands on the page."""
import json
import shutil

import pytest
import yaml
from omegaconf import OmegaConf

from ptlab.sweeps import claims, pages, replicate
from ptlab.sweeps.report import main as report
from ptlab.sweeps.runs import load_runs
from tests.test_run import TINY, cli
from ptlab.checks.commands import group_options
from ptlab.training.summary import code_version

STUDIES = [name for name in group_options("experiment") if name != "optuna_lr"]  # optuna_lr tunes, it claims nothing
SUBDIR = ["hydra.sweep.subdir=${hydra:job.num}"]  # the overrides would make too long a directory name
SMALL = [*TINY, "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "task.eval_samples=2"]


@pytest.mark.parametrize("experiment", STUDIES)
def test_every_shipped_study_declares_claims_on_configurations_it_runs(experiment):
    cfg = pages.compose([f"experiment={experiment}"], hydra=True)
    study = claims.declared(OmegaConf.to_container(cfg.study))
    swept = {key.lstrip("+"): str(values).split(",") for key, values in cfg.hydra.sweeper.params.items()}
    assert study.claims and len(swept.pop("seed")) == study.seeds  # the seed count declared is the one run
    for claim in study.claims:
        for side in (claim.a, claim.b):
            if side == claims.REFERENCE:
                continue
            for key, value in claims.parse_selector(side).items():
                fixed = cfg.hydra.runtime.choices[key] if key in cfg.hydra.runtime.choices else str(cfg.get(key))
                assert value in swept.get(key, [fixed]), f"{claim.name}: {key}={value} is not run by the experiment"
            assert set(swept) <= set(claims.parse_selector(side)), f"{claim.name} leaves a swept key open"


def test_shipped_pages_match_their_experiment_and_are_not_edited_by_hand():
    for path in sorted(pages.RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        experiment = data["experiment"] if data.get("compose") is None else None  # a bench's page: the default config
        assert data["config_hash"] == pages.config_hash(experiment), (
            f"{path.name} was generated from another config of experiment={data['experiment']}: re-run it and "
            f"regenerate the page (python -m ptlab.sweeps.report multirun/{data['experiment']} --page)")
        assert path.with_suffix(".md").read_text() == pages.render_page(data), f"{path.with_suffix('.md').name} was edited by hand"


@pytest.fixture(scope="module")
def default_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    proc, _ = cli("-m", "experiment=default", "seed=0,1,2", f"hydra.sweep.dir={root / 'runs'}", *SMALL, *SUBDIR,
                  env_extra=root / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_a_page_is_generated_with_provenance_from_a_real_study(default_study, tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "RESULTS", tmp_path / "results")
    report([str(default_study / "runs"), "--page"])
    data = json.loads((tmp_path / "results" / "default.json").read_text())
    text = (tmp_path / "results" / "default.md").read_text()
    assert data["config_hash"] == pages.config_hash("default") and f"config hash `{data['config_hash']}`" in text
    record = data["provenance"]
    assert record["seeds"] == [0, 1, 2] and record["jobs"] == "3 (0 failed)"
    assert len(record["command"]) == 1 and record["command"][0].startswith("python run.py -m experiment=default")
    assert "seed=0,1,2" in record["command"][0]
    assert record["commit"][0].split(" ")[0] == (code_version()["commit"] or "unknown")[:10]
    assert record["threads per job"] and record["torch"] and "min from first start to last end" in record["wall time"][0]
    assert [c["name"] for c in data["claims"]] == ["algorithm=gvpo - reference"] * 2
    assert "### Declared claims" in text and "(default)" not in text.split("## Report")[0]
    assert all((tmp_path / "results" / image.split("](")[1].rstrip(")")).exists()
               for image in text.split() if image.startswith("![") and "](" in image)


def test_no_page_from_runs_of_another_config(default_study, tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "RESULTS", tmp_path / "results")
    copy = tmp_path / "runs"
    shutil.copytree(default_study / "runs", copy)
    job = copy / "1"  # the job of seed 1
    config = yaml.safe_load((job / "config.yaml").read_text())
    config["model"]["cache_dir"] = "/elsewhere"  # where a file was cached is not what was run: still a page
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    assert pages.config_mismatch(load_runs(copy)) is None
    del config["cache_evaluation"]  # a job from before the key, which computed what its default computes
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    assert pages.config_mismatch(load_runs(copy)) is None
    config["cache_evaluation"] = False  # not its neutral value: another config
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    assert "cache_evaluation is False" in pages.config_mismatch(load_runs(copy))
    config["cache_evaluation"] = True
    config["beta"] = 0.25  # as if the experiment's beta had been edited after this job ran
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match="its runs were made with another config .*beta is 0.25"):
        report([str(copy), "--page"])
    assert not (tmp_path / "results" / "default.md").exists()


def test_an_arm_added_later_has_its_own_command_and_dates(default_study, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(default_study / "runs", copy)
    job = copy / "2"  # as if seed 2 had been run later, at another commit, with one more override
    summary = json.loads((job / "summary.json").read_text())
    summary["environment"]["commit"] = "f" * 40
    summary["finished_at"], summary["wall_seconds"] = "2030-01-02T03:34:00+00:00", 240.0
    (job / "summary.json").write_text(json.dumps(summary))
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, "module.overlong_filter=true"]))
    record = pages.provenance(load_runs(copy), copy)
    first, later = record["command"]
    assert "seed=0,1" in first and "overlong_filter" not in first
    assert "seed=2" in later and "module.overlong_filter=true" in later
    assert len(record["commit"]) == 2 and record["dates"][1] == "2030-01-02 03:30 UTC to 2030-01-02 03:34 UTC (ffffffffff: 1 job)"
    assert record["wall time"][1] == "4.0 min from first start to last end; 4.0 min summed over jobs (ffffffffff: 1 job)"
    table = pages.provenance_table(record)
    assert f"`{first}`<br>`{later}`" in table and "; 2030-01-02 03:30 UTC" in table


def test_replication_runs_new_seeds_and_lands_on_the_page(default_study, tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(replicate, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("PTLAB_CACHE_DIR", str(default_study / "cache"))
    report([str(default_study / "runs"), "--page"])
    with pytest.raises(SystemExit, match=r"seeds \[2, 3, 4\] were used by the original study"):
        replicate.main(["default", "--seeds", "2-4", *SMALL, *SUBDIR])
    record = replicate.main(["default", "--seeds", "10-12", "--dir", str(tmp_path / "again"), *SMALL, *SUBDIR])
    assert sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "again").rglob("summary.json")) == [10, 11, 12]
    assert [row["replication"] for row in record["claims"]] and all(row["units"] == 3 for row in record["claims"])
    assert record["provenance"]["seeds"] == [10, 11, 12] and record["command"].startswith("python -m ptlab.sweeps.replicate default --seeds 10-12")
    page = (tmp_path / "results" / "default.md").read_text()
    assert "## Replication on seeds 10-12" in page and page.count("**original not significant**") + page.count(
        "**replicated**") + page.count("**not replicated**") + page.count("**inconclusive**") == 2
