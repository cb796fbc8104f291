"""Declared claims: the multiplicity correction, the power figure and the replication verdicts,
checked against hand-computed cases and an independent noncentral-t computation; "significant"
never from 2 seeds or a zero-variance difference; seeds sharing a warm start averaged first."""
import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from ptlab.sweeps import claims, stats
from ptlab.sweeps.replicate import configurations, verdict
from ptlab.sweeps.report import main as report
from ptlab.sweeps.runs import load_runs, matches


def test_holm_by_hand():
    # sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06, monotone)
    reject, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject == [True, False, False, True]
    # an untestable claim (nan) counts in the family as p = 1: the others are still corrected for 3
    reject, adjusted = stats.holm([0.02, float("nan"), 0.01], alpha=0.05)
    assert adjusted == pytest.approx([0.04, 1.0, 0.03]) and reject == [True, False, True]


def noncentral_t_power(units: int, effect: float, alpha: float, two_sided: bool) -> float:
    """Power of the one-sample t test, straight from the noncentral t distribution (scipy)."""
    df, shift = units - 1, effect * math.sqrt(units)
    if two_sided:
        critical = scipy_stats.t.ppf(1 - alpha / 2, df)
        return scipy_stats.nct.sf(critical, df, shift) + scipy_stats.nct.cdf(-critical, df, shift)
    return scipy_stats.nct.sf(scipy_stats.t.ppf(1 - alpha, df), df, shift)


@pytest.mark.parametrize("effect, alpha, alternative", [(1.0, 0.05, "two-sided"), (0.5, 0.05, "two-sided"),
                                                        (0.8, 0.01, "greater"), (1.6, 0.01, "two-sided")])
def test_units_for_80_percent_power_match_the_noncentral_t(effect, alpha, alternative):
    units = stats.units_for_power(effect, alpha, alternative)
    two_sided = alternative == "two-sided"
    assert noncentral_t_power(units, effect, alpha, two_sided) >= 0.8 > noncentral_t_power(units - 1, effect, alpha, two_sided)
    assert stats.power(units, effect, alpha, alternative) == pytest.approx(noncentral_t_power(units, effect, alpha, two_sided), abs=1e-6)


def test_power_figures_by_hand():
    # textbook figures for a paired t test at alpha 0.05 two-sided: d = 1 needs 10 pairs, d = 0.5 needs 34
    assert stats.units_for_power(1.0, 0.05) == 10 and stats.units_for_power(0.5, 0.05) == 34
    assert stats.units_for_power(-0.5, 0.05, "greater") is None  # the effect points the other way
    assert stats.units_for_power(0.0, 0.05) is None
    # where scipy's noncentral t underflows (nan), power is 1, not a failure to reach 0.8
    assert stats.power(1251, 1.0, 0.05) == pytest.approx(1.0)
    # the old "seeds needed" (the n at which the t interval just excludes the mean: 7 at d = 1) had
    # 60% power, not 80%
    assert stats.power(7, 1.0, 0.05) == pytest.approx(0.600, abs=0.001)


def test_two_units_and_zero_variance_are_never_significant():
    two = stats.difference([0.50, 0.51])  # t = 101 on 1 dof: p 0.006
    assert two.p < 0.05 and two.testable.startswith("untestable: 2 units")  # p alone would say yes
    constant = stats.difference([0.1, 0.1, 0.1, 0.1])
    assert math.isnan(constant.p) and "zero variance" in constant.testable
    assert stats.difference([0.1, 0.2, 0.3]).testable is None


def test_one_sided_claim_by_hand():
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.464 on 2 dof; two-sided p 0.0742, one-sided 0.0371
    assert stats.difference([1, 2, 3]).p == pytest.approx(0.0742, abs=1e-4)
    assert stats.difference([1, 2, 3], "greater").p == pytest.approx(0.0371, abs=1e-4)
    assert stats.difference([1, 2, 3], "less").p == pytest.approx(1 - 0.0371, abs=1e-4)
    low, high = stats.difference([1, 2, 3]).low, stats.difference([1, 2, 3]).high
    assert (low, high) == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)), abs=1e-3)


STUDY = {"metric": "val/accuracy", "alpha": 0.05, "seeds": 4,
         "claims": [{"a": "algorithm=gvpo", "b": "reference", "expect": "greater"},
                    {"a": "algorithm=gvpo", "b": "algorithm=grpo"}]}


def write_job(root, algorithm: str, seed: int, value: float, reference: float, warm: str, study=STUDY, data="rows{seed}"):
    job = root / f"algorithm={algorithm},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- experiment=x\n- algorithm={algorithm}\n- seed={seed}\n")
    (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "sweep": "x", "study": study, "task": {"seed": seed}}))
    (job / "summary.json").write_text(json.dumps({"algorithm": algorithm, "seed": seed, "status": "completed",
                                                  "val/accuracy": value, "ref/val/accuracy": reference, "warmstart": warm,
                                                  **({"task_data": data.format(seed=seed)} if data else {})}))


def test_declared_claims_are_corrected_and_labelled(tmp_path):
    gains = {0: 0.05, 1: 0.07, 2: 0.06, 3: 0.065, 4: 0.5}  # seed 4 is beyond the 4 declared: left out
    for seed, gain in gains.items():
        write_job(tmp_path, "gvpo", seed, 0.3 + gain, 0.3, f"ws{seed}")
        write_job(tmp_path, "grpo", seed, 0.3 + gain + [0.01, -0.02, 0.0, 0.005, 0.0][seed], 0.3, f"ws{seed}")
        write_job(tmp_path, "rloo", seed, 0.3, 0.3, f"ws{seed}")
    text = report([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| algorithm=")}
    by_hand = stats.difference([0.05, 0.07, 0.06, 0.065], "greater")
    vs_reference = rows["algorithm=gvpo - reference"]
    assert vs_reference[3] == "4" and float(vs_reference[6]) == pytest.approx(0.06125, abs=1e-3)
    assert vs_reference[7] == "4 of 4"
    assert float(vs_reference[10]) == pytest.approx(by_hand.p, rel=1e-2)
    adjusted = stats.holm([by_hand.p, stats.difference([-0.01, 0.02, 0.0, -0.005]).p])[1][0]
    assert float(vs_reference[11]) == pytest.approx(adjusted, rel=1e-2) and vs_reference[12] == "**significant: A > B**"
    assert "run seed, warm start, task draw (task.seed)" == vs_reference[14]
    assert rows["algorithm=gvpo - algorithm=grpo"][12] == "**not significant**"
    assert "Seeds [4] are beyond the 4 declared" in text
    exploratory = text[text.index("### Exploratory pairs"):]
    assert "| algorithm=grpo - algorithm=rloo | 4 |" in exploratory and "algorithm=gvpo - algorithm=grpo |" not in exploratory


def test_arms_equal_on_every_seed_are_marked_and_many_pairs_fold(tmp_path, monkeypatch):
    import ptlab.sweeps.report

    for seed, gain in enumerate([0.05, 0.07, 0.06, 0.065]):
        for algorithm, value in [("gvpo", 0.3 + gain), ("grpo", 0.3 + gain / 2), ("sapo", 0.3 + gain / 2), ("rloo", 0.3)]:
            write_job(tmp_path, algorithm, seed, value, 0.3, f"ws{seed}")
    text = report([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    exploratory = text[text.index("### Exploratory pairs"):text.index("### Results")]
    rows = [line for line in exploratory.splitlines() if line.startswith("| algorithm=")]
    # 3 arms against the reference, 6 pairs of 4 arms, less the 1 declared pair; grpo and sapo take the same
    # steps, rloo none: equal on every seed, no test, not in the q-values' family
    assert len(rows) == 8 and "| algorithm=grpo - algorithm=sapo | 4 | 0 | equal in all 4 units |  |  |  |" in rows
    assert "| algorithm=rloo - reference | 4 | 0 | equal in all 4 units |  |  |  |" in rows
    assert "| q (BH, 6 pairs) |" in exploratory and "<details>" not in exploratory
    monkeypatch.setattr(ptlab.sweeps.report, "FOLD", 5)
    folded = report([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    q_values = [float(line.strip("|").split("|")[-1]) for line in rows if line.strip("|").split("|")[-1].strip()]
    summary = f"<details><summary>8 pairs, {sum(q < 0.05 for q in q_values)} with q below 0.05</summary>"
    assert summary in folded and folded.count("</details>") == 1 and all(row in folded for row in rows)
    assert "reference differs" not in text
    write_job(tmp_path, "gspo", 0, 0.4, 0.31, "another warm start")  # an arm added later whose seed-0 reference moved
    text = report([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    assert ("**The reference differs within a seed** (`ref/val/accuracy`; the arms' warm starts were not the same): "
            "seed 0: 0.3 (algorithm=grpo, algorithm=gvpo, algorithm=rloo, ...), 0.31 (algorithm=gspo).") in text


def test_seeds_sharing_a_warm_start_are_averaged_into_one_unit(tmp_path):
    for seed, (warm, gain) in enumerate([("a", 0.1), ("a", 0.3), ("b", 0.0), ("b", 0.2), ("c", 0.5), ("c", 0.1)]):
        write_job(tmp_path, "gvpo", seed, 0.2 + gain, 0.2, warm, study={**STUDY, "seeds": 6})
    runs = load_runs(tmp_path)
    data = claims.paired(runs, "algorithm=gvpo", "reference", "val/accuracy")
    assert sorted(data.units) == pytest.approx([0.1, 0.2, 0.3])  # per warm start: (0.1+0.3)/2, (0+0.2)/2, (0.5+0.1)/2
    assert "3 warm starts, seeds averaged within each" in data.covers


@pytest.mark.parametrize("data, covers", [("rows{seed}", "run seed, warm start, task draw (task.seed)"),
                                          ("same rows", "run seed, warm start"),  # task.seed differed, the rows did not
                                          (None, "run seed, warm start, task.seed, the data it drew not recorded")])
def test_an_interval_covers_the_task_draw_only_when_the_data_differ(tmp_path, data, covers):
    for seed in range(3):
        write_job(tmp_path, "gvpo", seed, 0.4 + 0.01 * seed, 0.3, f"ws{seed}", data=data)
    assert claims.paired(load_runs(tmp_path), "algorithm=gvpo", "reference", "val/accuracy").covers == covers


def test_two_seeds_never_give_significant(tmp_path):
    for seed in (0, 1):
        write_job(tmp_path, "gvpo", seed, 0.9, 0.1 + 0.001 * seed, f"ws{seed}", study={**STUDY, "seeds": 2})
        write_job(tmp_path, "grpo", seed, 0.1, 0.1, f"ws{seed}", study={**STUDY, "seeds": 2})
    text = report([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    assert "significant:" not in text and text.count("untestable: 2 units") == 2


def test_a_partial_study_names_its_missing_cells(tmp_path):
    # 3 of 4 declared seeds started; grpo's seed 2 has not finished (no summary yet): the claims are
    # tested on what both sides have, and the report lists the cells a re-run still has to fill
    for seed in (0, 1, 2):
        write_job(tmp_path, "gvpo", seed, 0.4 + 0.01 * seed, 0.3, f"ws{seed}")
        if seed < 2:
            write_job(tmp_path, "grpo", seed, 0.35, 0.3, f"ws{seed}")
    (tmp_path / "algorithm=grpo,seed=2" / ".hydra").mkdir(parents=True)
    text = report([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    assert "**Partial study**: 3 of the 4 declared seeds" in text
    assert "**Missing cells**" in text and "`algorithm=grpo` seed 2." in text and "`algorithm=gvpo`" not in text
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| algorithm=")}
    assert rows["algorithm=gvpo - algorithm=grpo"][3] == "2" and rows["algorithm=gvpo - reference"][3] == "3"


def original(mean, sd, significant=True, expect="two-sided"):
    return {"mean": mean, "sd": sd, "significant": significant, "expect": expect, "verdict": "significant: A > B"}


def result_of(values, alpha=0.05, family=1):
    study = claims.Study("m", alpha, len(values), (claims.Claim("a=1", "a=2", "m"),))
    test = stats.difference(values)
    reject, adjusted = stats.holm([test.p] * family, alpha)
    return claims.Result(study.claims[0], None, test, adjusted[0], reject[0] and test.testable is None)


def test_replication_verdicts():
    rng = np.random.default_rng(0)
    same = result_of(list(0.05 + 0.01 * rng.standard_normal(6)))
    assert verdict(original(0.05, 0.01), same, 1, 0.05) == ("replicated", "")
    reversed_ = result_of(list(-0.05 + 0.01 * rng.standard_normal(6)))
    assert verdict(original(0.05, 0.01), reversed_, 1, 0.05)[0] == "not replicated"
    null = result_of([0.01, -0.01, 0.02, -0.02, 0.0, 0.005])  # sd 0.0143
    # a difference of 0.05 is 3.5 of the re-run's standard deviations: six units had all the power to see it
    label, note = verdict(original(0.05, 0.01), null, 1, 0.05)
    assert label == "not replicated" and "power 1.00" in note
    # a difference of 0.01 is 0.7 of them: six units have little power, so the re-run cannot tell
    label, note = verdict(original(0.01, 0.02), null, 1, 0.05)
    effect = 0.01 / null.test.sd
    assert label == "inconclusive" and f"power {stats.power(6, effect, 0.05):.2f}" in note
    assert f"{stats.units_for_power(effect, 0.05)} units for 80%" in note
    # the original's effect taken in the re-run's spread: a noisier re-run had less power than the
    # original's d_z would credit it with (here d_z 5 originally; 0.05 / 0.1 = 0.5 in the re-run)
    noisy = result_of([0.25, -0.1, 0.05, -0.05, 0.1, -0.05])
    assert verdict(original(0.05, 0.01), noisy, 1, 0.05)[0] == "inconclusive"
    assert verdict(original(0.05, 0.01, significant=False), same, 1, 0.05)[0] == "original not significant"


def test_replication_runs_the_configurations_the_claims_name_in_the_sweeps_spelling():
    study = claims.declared({"metric": "m", "alpha": 0.05, "seeds": 3, "claims": [
        {"a": "algorithm=gvpo,regime=stale", "b": "algorithm=grpo,regime=stale"},
        {"a": "algorithm=gvpo,regime=stale", "b": "reference"}]})
    assert configurations(study, ["+regime", "algorithm", "seed"]) == [["algorithm=gvpo", "+regime=stale"],
                                                                        ["algorithm=grpo", "+regime=stale"]]


def test_selectors_compare_numbers_by_value(tmp_path):
    # Hydra records a swept `lr: 1e-3` as lr=0.001; a claim written as in the sweep must still find it
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- algorithm=gvpo\n- lr=0.001\n- seed=0\n")
    (job / "summary.json").write_text(json.dumps({"algorithm": "gvpo", "seed": 0, "lr": 0.001}))
    (run,) = load_runs(tmp_path)
    assert matches(run, {"lr": "1e-3", "algorithm": "gvpo"}) and not matches(run, {"lr": "1e-4"})
    assert not matches(run, {"algorithm": "grpo"})


def test_a_bad_declaration_is_refused_naming_the_key():
    from ptlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"study.claims\[0\].expect='up' is not allowed"):
        claims.declared({**STUDY, "claims": [{"a": "algorithm=gvpo", "b": "reference", "expect": "up"}]})
    with pytest.raises(ConfigError, match="study.alpha=2"):
        claims.declared({**STUDY, "alpha": 2})
