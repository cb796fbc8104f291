"""Comparisons that survive re-tuning: the reward-KL frontier (sweeps/frontier.py), claims on the
asymptote, the midpoint and at matched KL (sweeps/claims.py), and each arm's setting chosen on its
tuning seeds (sweeps/tune.py), worked by hand on runs written as ptlab writes them."""
import json
import math

import numpy as np
import pytest

from ptlab.errors import ConfigError
from ptlab.sweeps import claims, curves, frontier, tune
from ptlab.sweeps.runs import Run

STEPS = [0, 50, 100, 150, 200]


def write_run(directory, label: str, seed: int, kl: list[float], metric: list[float], reference: float = 0.3) -> Run:
    """A run as ptlab writes it: summary.json and csv/ with val/kl_ref and val/accuracy at each validation."""
    (directory / "csv" / "version_0").mkdir(parents=True)
    rows = ["step,val/kl_ref,val/accuracy"] + [f"{s},{k},{m}" for s, k, m in zip(STEPS, kl, metric)]
    (directory / "csv" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    summary = {"seed": seed, "status": "completed", "val/accuracy": metric[-1], "ref/val/accuracy": reference,
               "val/kl_ref": kl[-1]}
    (directory / "summary.json").write_text(json.dumps(summary))
    overrides = [part for part in label.split(",")]
    return Run(directory, summary, label, overrides)


def test_the_metric_at_a_kl_is_read_between_validations_and_never_extrapolated(tmp_path):
    run = write_run(tmp_path, "algorithm=gvpo", 0, kl=[0.0, 0.2, 0.5, 1.0, 2.0], metric=[0.3, 0.4, 0.5, 0.55, 0.6])
    assert frontier.at_kl(run, "val/accuracy", 0.35) == pytest.approx(0.45)  # halfway between (0.2, 0.4) and (0.5, 0.5)
    assert frontier.at_kl(run, "val/accuracy", 1.5) == pytest.approx(0.575)
    assert math.isnan(frontier.at_kl(run, "val/accuracy", 2.5))  # the run never moved that far


def test_a_claim_at_matched_kl_pairs_the_arms_seed_by_seed_where_a_raw_comparison_says_the_opposite(tmp_path):
    """B ends higher (0.62 against 0.55 and more) by moving four times as far; at KL 0.5 A is ahead on every seed."""
    runs = []
    for seed in range(4):
        shift = 0.01 * seed
        runs.append(write_run(tmp_path / f"a{seed}", "algorithm=gvpo", seed, [0, 0.1, 0.25, 0.4, 0.5],
                              [0.3, 0.4 + shift, 0.48 + shift, 0.53 + shift, 0.55 + shift]))
        runs.append(write_run(tmp_path / f"b{seed}", "algorithm=grpo", seed, [0, 0.5, 1.0, 1.5, 2.0],
                              [0.3, 0.42 + 2 * shift, 0.5 + 2 * shift, 0.58 + 2 * shift, 0.62 + 2 * shift]))
    study = claims.declared({"metric": "val/accuracy", "alpha": 0.05, "seeds": 4, "claims": [
        {"a": "algorithm=gvpo", "b": "algorithm=grpo"},
        {"a": "algorithm=gvpo", "b": "algorithm=grpo", "on": "kl", "kl": 0.5}]})
    final, matched = claims.evaluate(runs, study)
    assert final.test.mean == pytest.approx(-0.085) and matched.claim.name == "algorithm=gvpo - algorithm=grpo (kl 0.5)"
    assert matched.data.units == pytest.approx([0.13, 0.12, 0.11, 0.10])  # 0.55 + s against 0.42 + 2s, seed by seed
    assert matched.significant and final.significant and final.test.mean < 0 < matched.test.mean


def test_claims_on_the_asymptote_and_midpoint_fit_each_seeds_curve(tmp_path):
    truth = dict(r0=0.3, steepness=2.0)
    runs = []
    for seed in range(3):
        for arm, (asymptote, midpoint) in {"algorithm=gvpo": (0.7, 40.0), "algorithm=grpo": (0.6, 80.0)}.items():
            values = curves.sigmoid(np.array(STEPS, dtype=float), asymptote=asymptote + 0.01 * seed, midpoint=midpoint,
                                    **truth)
            runs.append(write_run(tmp_path / f"{arm}{seed}", arm, seed, [0.1] * 5, values.tolist()))
    study = claims.declared({"metric": "val/accuracy", "alpha": 0.05, "seeds": 3, "claims": [
        {"a": "algorithm=gvpo", "b": "algorithm=grpo", "on": "asymptote"},
        {"a": "algorithm=gvpo", "b": "algorithm=grpo", "on": "midpoint"},
        {"a": "algorithm=gvpo", "b": "reference", "on": "asymptote"}]})
    asymptote, midpoint, gain = claims.evaluate(runs, study)
    assert asymptote.data.units == pytest.approx([0.1] * 3, abs=1e-4)
    assert midpoint.data.units == pytest.approx([-40.0] * 3, abs=1e-2)
    assert gain.data.units == pytest.approx([0.4, 0.41, 0.42], abs=1e-4)  # A against R0, the reference


@pytest.mark.parametrize("claim,message", [
    ({"on": "slope"}, "claims[0].on='slope' is not allowed: one of final, asymptote, midpoint, kl"),
    ({"on": "kl"}, "claims[0].kl=None is not allowed: on: kl needs kl"),
    ({"on": "midpoint", "b": "reference"}, "claims[0]: on: midpoint compares two arms"),
])
def test_a_claim_kind_that_cannot_be_tested_is_refused_naming_it(claim, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        claims.declared({"metric": "m", "alpha": 0.05, "seeds": 2, "claims": [{"a": "algorithm=gvpo", "b": "algorithm=grpo",
                                                                             **claim}]})


def test_the_rule_picks_the_best_mean_over_the_tuning_seeds_never_a_failed_setting_ties_to_the_first(tmp_path):
    runs, grid = [], {"lr": [1e-4, 3e-4, 1e-3, 3e-3]}
    finals = {1e-4: [0.40, 0.44], 3e-4: [0.50, 0.46], 1e-3: [0.48, 0.48], 3e-3: [0.70, None]}  # 3e-3 diverged on seed 1
    for lr, values in finals.items():
        for seed, value in zip((1000, 1001), values):
            run = write_run(tmp_path / f"{lr}-{seed}", f"algorithm=gvpo,lr={lr}", seed, [0.1] * 5, [0.3] * 4 + [value or 0.0])
            if value is None:
                run.summary["status"] = "failed"
            runs.append(run)
    chosen = tune.choose(runs, {"algorithm": "gvpo"}, grid, "val/accuracy", [1000, 1001])
    assert [row["mean"] for row in chosen["points"]] == pytest.approx([0.42, 0.48, 0.48, None])
    assert chosen["chosen"] == {"lr": 3e-4}  # 0.48 twice: the first declared (the smaller lr); 3e-3 failed once
    assert tune.grid_of(claims.tuning_of({"seeds": [1], "grid": grid, "arms": {"algorithm=sft": {"lr": [1e-5]}}}),
                        {"algorithm": "sft"}) == {"lr": [1e-5]}


def test_tuning_on_the_claim_seeds_and_a_tuned_key_that_is_also_swept_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"study.tuning.seeds \[0\] are claim seeds .*tuning on the claim seeds is refused"):
        tune.tune("algorithms_tuned", tmp_path / "run", run=False, extra=["study.tuning.seeds=[0,1000]",
                                                                          "hydra.sweeper.params.seed='0,1'"])
    with pytest.raises(SystemExit, match="lr is both swept and tuned"):
        tune.arms({"algorithm": ["grpo"], "lr": ["1e-3"]}, {"lr"})


@pytest.mark.slow  # five short runs through run.py (tuning, claims, replication): about a minute
def test_a_tuned_study_tunes_chooses_runs_its_claims_and_its_page_and_replication_use_the_choice(tmp_path, monkeypatch):
    from ptlab.sweeps import pages, replicate
    from ptlab.sweeps.report import main as report
    from tests.test_run import TINY

    monkeypatch.setattr(pages, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(replicate, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("PTLAB_CACHE_DIR", str(tmp_path / "cache"))
    shrink = [*TINY, "trainer.max_steps=3", "trainer.val_check_interval=1", "task.eval_samples=2", "hydra.sweep.subdir=${hydra:job.num}",
              "hydra.sweeper.params.algorithm=gvpo", "hydra.sweeper.params.seed='300,301'", "study.seeds=2",
              "study.tuning.seeds=[1000]",  # the declared grid, lr 1e-4, 3e-4, 1e-3
              "study.claims=[{a:'algorithm=gvpo',b:reference,expect:greater}]"]
    directory = tmp_path / "multirun" / "algorithms_tuned"
    record = tune.tune("algorithms_tuned", directory, extra=shrink)
    points = record["arms"][0]["points"]
    assert [row["setting"] for row in points] == [{"lr": 1e-4}, {"lr": 3e-4}, {"lr": 1e-3}] and all(row["complete"] for row in points)
    best = max(points, key=lambda row: row["mean"])  # ties: the first
    assert record["arms"][0]["chosen"] == next(row for row in points if row["mean"] == best["mean"])["setting"]
    claim_runs = [json.loads(path.read_text()) for path in directory.rglob("summary.json")]
    assert sorted((s["seed"], s["lr"]) for s in claim_runs) == [(seed, record["arms"][0]["chosen"]["lr"]) for seed in (300, 301)]
    tuning_runs = [json.loads(path.read_text()) for path in (tmp_path / "multirun" / "algorithms_tuned-tuning").rglob("summary.json")]
    assert sorted((s["seed"], s["lr"]) for s in tuning_runs) == [(1000, 1e-4), (1000, 3e-4), (1000, 1e-3)]
    assert tune.tune("algorithms_tuned", directory, run=False, extra=shrink) == record  # the choice is kept
    report([str(directory), "--page"])
    text = (tmp_path / "results" / "algorithms_tuned.md").read_text()
    assert "### Tuning" in text and "**chosen**" in text and "val_sampled_accuracy_vs_kl_ref.png" in text
    assert json.loads((tmp_path / "results" / "algorithms_tuned.json").read_text())["tuning"]["arms"] == record["arms"]
    with pytest.raises(SystemExit, match=r"seeds \[1000\] were used by the original study"):
        replicate.main(["algorithms_tuned", "--seeds", "1000", *shrink])
    again = replicate.main(["algorithms_tuned", "--seeds", "400-401", "--dir", str(tmp_path / "again"), *shrink])
    replayed = [json.loads(path.read_text()) for path in (tmp_path / "again").rglob("summary.json")]
    assert sorted((s["seed"], s["lr"]) for s in replayed) == [(seed, record["arms"][0]["chosen"]["lr"]) for seed in (400, 401)]
    assert [row["units"] for row in again["claims"]] == [2]


def test_the_ranking_groups_configurations_whose_intervals_overlap_and_shows_how_far_each_moved(tmp_path):
    from ptlab.sweeps.report import ranking_section

    runs = []
    for seed in range(4):  # GVPO and GRPO level (their intervals overlap), RS below both
        runs.append(write_run(tmp_path / f"a{seed}", "algorithm=gvpo", seed, [0, .1, .2, .3, .4], [.3, .4, .45, .5, .50 + .01 * seed]))
        runs.append(write_run(tmp_path / f"b{seed}", "algorithm=grpo", seed, [0, .1, .2, .3, .8], [.3, .4, .45, .5, .49 + .01 * seed]))
        runs.append(write_run(tmp_path / f"c{seed}", "algorithm=rs", seed, [0, .1, .2, .3, .2], [.3, .35, .36, .38, .40 + .005 * seed]))
    tuning = {"arms": [{"arm": "algorithm=gvpo", "chosen": {"lr": 3e-4}}]}
    rows = [line.split(" | ") for line in ranking_section(runs, "val/accuracy", tuning).splitlines() if line.startswith("| ")][1:]
    assert [(row[0], row[1]) for row in rows] == [("| 1", "algorithm=gvpo (lr=0.0003)"), ("| 1", "algorithm=grpo"),
                                                   ("| 2", "algorithm=rs")]
    assert [row[4].rstrip(" |") for row in rows] == ["0.4", "0.8", "0.2"]  # the mean final KL of each
