"""The report: a markdown pivot of summary.json files, mean and 95% CI over seeds, and paired
comparisons (scipy.stats and rliable, checked here against hand-computed cases)."""
import itertools
import json
import math

import matplotlib.image
import numpy as np
import pytest

from ptlab.sweeps import stats
from ptlab.sweeps.plots import line_styles
from ptlab.sweeps.report import main, mean_ci


def test_mean_and_confidence_interval_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-4)
    assert math.isnan(mean_ci([5.0])[1])


def test_report_pivots_runs_by_algorithm_and_sampler(tmp_path):
    runs = [("gvpo", "on_policy", 0, 0.1), ("gvpo", "on_policy", 1, 0.3), ("dpo", "reference", 0, 2.0)]
    for i, (algorithm, sampler, seed, kl) in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(
            {"algorithm": algorithm, "sampler": sampler, "seed": seed, "exact/kl_to_optimum": kl}))
    table = main([str(tmp_path), "--metrics", "exact/kl_to_optimum", "--pivot", "algorithm,sampler", "--plot", "",
                  "--out", str(tmp_path / "table.md")])
    lines = table.splitlines()[2:]  # after "### Results"
    assert lines[0] == "exact/kl_to_optimum, mean ± half-width of the Student t 95% interval over n seeds (scipy.stats)"
    lines = lines[2:]
    assert lines[0] == "| algorithm \\ sampler | on_policy | reference |"
    assert lines[2] == "| dpo |  | 2.000 (n=1) |"
    assert lines[3].startswith("| gvpo | 0.200 ± 1.271 (n=2) |")  # 12.706 * 0.1414 / 1.414
    assert table in (tmp_path / "table.md").read_text()


def test_line_styles_give_each_cell_of_a_two_factor_grid_its_own_look():
    labels = [f"algorithm={a},sampler={s}" for a in ("dpo", "grpo", "gvpo", "rs") for s in ("offline", "on_policy", "reference", "replay")]
    styles = line_styles(labels, ["c0", "c1", "c2", "c3"])
    assert len(set(styles.values())) == 16
    assert {styles[f"algorithm=gvpo,sampler={s}"][0] for s in ("offline", "on_policy", "reference", "replay")} == {"c2"}
    assert {styles[f"algorithm={a},sampler=replay"][1] for a in ("dpo", "grpo", "gvpo", "rs")} == {"-."}


def test_line_styles_colour_the_factor_with_more_values():
    labels = [f"sampler={s},algorithm={a}" for s in ("on_policy", "reference") for a in ("a", "b", "c", "d", "e", "f")]
    styles = line_styles(labels, [f"c{i}" for i in range(20)])
    assert len(set(styles.values())) == 12
    assert {styles[f"sampler={s},algorithm=c"][0] for s in ("on_policy", "reference")} == {"c2"}  # colour: algorithm
    assert {styles[f"sampler=reference,algorithm={a}"][1] for a in "abcdef"} == {"--"}  # style: sampler


def test_line_styles_past_the_colours_come_round_with_the_next_style():
    labels = [f"algorithm=a{i:02d}" for i in range(22)]
    styles = line_styles(labels, [f"c{i}" for i in range(20)])
    assert len(set(styles.values())) == 22
    assert styles["algorithm=a00"] == ("c0", "-") and styles["algorithm=a20"] == ("c0", "--") and styles["algorithm=a21"] == ("c1", "--")


def test_a_study_with_many_arms_gets_its_final_gains_plotted_one_row_each(tmp_path):
    from ptlab.sweeps import plots

    for arm in range(plots.BANDS + 1):
        for seed in range(2):
            job = tmp_path / "runs" / f"{arm}-{seed}"
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "overrides.yaml").write_text(f"- algorithm=a{arm}\n- seed={seed}\n")
            (job / "summary.json").write_text(json.dumps({"algorithm": f"a{arm}", "seed": seed, "status": "completed",
                                                          "val/accuracy": 0.3 + 0.01 * arm + 0.001 * seed, "ref/val/accuracy": 0.3}))
    text = main([str(tmp_path / "runs"), "--metrics", "val/accuracy", "--plot", "val/accuracy", "--x", "",
                 "--out", str(tmp_path / "report.md")])
    image = tmp_path / "runs" / "val_accuracy_gains.png"
    assert "![val_accuracy_gains](val_accuracy_gains.png)" in text and matplotlib.image.imread(image).shape[0] > 330  # 3 inches or more at 110 dpi
    (tmp_path / "few").mkdir()
    for name in ("0-0", "1-0"):  # fewer arms: no such plot
        (tmp_path / "runs" / name).rename(tmp_path / "few" / name)
    assert "gains" not in main([str(tmp_path / "few"), "--metrics", "val/accuracy", "--plot", "val/accuracy", "--x", "",
                                "--out", str(tmp_path / "few.md")])


def test_configurations_are_ordered_by_value_not_by_text(tmp_path):
    for i, lr in enumerate(["0.01", "1e-05", "0.0001", "0.001"]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps({"algorithm": "gvpo", "lr": float(lr), "val/accuracy": 0.5}))
        (tmp_path / str(i) / ".hydra").mkdir()
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- algorithm=gvpo\n- lr={lr}\n- seed=0\n")
    text = main([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| lr=")]
    assert rows == ["lr=1e-05", "lr=0.0001", "lr=0.001", "lr=0.01"]
    pivot = main([str(tmp_path), "--metrics", "val/accuracy", "--pivot", "algorithm,lr", "--plot", ""])
    assert pivot.splitlines()[4] == "| algorithm \\ lr | 1e-05 | 0.0001 | 0.001 | 0.01 |"
    text = main([str(tmp_path), "--metrics", "val/accuracy", "--plot", "val/accuracy", "--x", "", "--vs", "lr"])
    assert "![val_accuracy_vs_final_lr](val_accuracy_vs_final_lr.png)" in text
    image = matplotlib.image.imread(tmp_path / "val_accuracy_vs_final_lr.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def write_runs(root, values: dict[str, list[float]]):
    """One job per (algorithm, seed) with the given val/accuracy, laid out as Hydra writes a multirun."""
    for algorithm, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            job = root / f"{algorithm}_{seed}"
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "overrides.yaml").write_text(f"- algorithm={algorithm}\n- seed={seed}\n")
            (job / "summary.json").write_text(json.dumps({"algorithm": algorithm, "seed": seed, "val/accuracy": value}))


def comparison_row(text: str) -> list[str]:
    row = [line for line in text.splitlines() if line.startswith("| algorithm=gvpo - algorithm=rloo |")]
    assert len(row) == 1, text
    return [cell.strip() for cell in row[0].strip("|").split("|")]


def test_report_on_identical_runs_finds_no_difference(tmp_path):
    write_runs(tmp_path, {"gvpo": [0.3, 0.5, 0.4], "rloo": [0.3, 0.5, 0.4]})
    text = main([str(tmp_path), "--metrics", "val/accuracy", "--plot", "", "--compare", "algorithm=gvpo", "algorithm=rloo"])
    row = comparison_row(text)
    assert row[1] == "3" and row[2] == "0" and row[5] == ""  # no spread: no p-value
    assert "not a declared claim" in text and "significant" not in text


def test_paired_comparison_sees_a_shift_that_seed_noise_hides_from_an_unpaired_test(tmp_path):
    # seeds differ a lot from each other, but gvpo is 0.05 above rloo on every seed, give or take 0.01
    rloo = [0.10, 0.50, 0.30, 0.70, 0.20]
    gvpo = [v + 0.05 + e for v, e in zip(rloo, [0.01, -0.01, 0.0, 0.005, -0.005])]
    write_runs(tmp_path, {"gvpo": gvpo, "rloo": rloo})
    row = comparison_row(main([str(tmp_path), "--metrics", "val/accuracy", "--plot", "", "--compare", "algorithm=gvpo", "algorithm=rloo"]))
    assert row[1] == "5" and float(row[2]) == pytest.approx(0.05)
    paired_p = float(row[5])
    welch_p = stats_ttest_ind(gvpo, rloo)
    assert paired_p < 0.001 and welch_p > 0.5  # paired p tiny, unpaired p large


def test_bootstrap_interval_matches_the_enumerated_bootstrap_distribution():
    # all 5^5 equally likely resamples of five values, enumerated: the exact percentile interval
    d = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    means = sorted(np.mean(sample) for sample in itertools.product(d, repeat=5))
    # 20,000 resamples put a percentile within about 0.002 of its level; allow 0.005 either side
    low_band, high_band = np.quantile(means, [0.02, 0.03]), np.quantile(means, [0.97, 0.98])
    low, high = stats.bootstrap_interval(d, np.mean)
    assert low_band[0] <= low <= low_band[1] and high_band[0] <= high <= high_band[1]
    assert stats.bootstrap_interval(d, np.mean) == (low, high)  # seeded: the same interval every time


def stats_ttest_ind(a, b) -> float:
    from scipy import stats as scipy_stats

    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_bars_of_a_categorical_key(tmp_path):
    for i, (algorithm, regime, value) in enumerate([("gvpo", "replay", 0.2), ("rloo", "replay", 0.1), ("gvpo", "stale", 0.3)]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- +regime={regime}\n- algorithm={algorithm}\n- seed=0\n")
        (job / "summary.json").write_text(json.dumps({"algorithm": algorithm, "regime": regime, "seed": 0, "val/accuracy": value}))
    text = main([str(tmp_path), "--metrics", "val/accuracy", "--plot", "val/accuracy", "--x", "", "--bars", "regime"])
    assert "![val_accuracy_vs_final_by_regime](val_accuracy_vs_final_by_regime.png)" in text
    image = matplotlib.image.imread(tmp_path / "val_accuracy_vs_final_by_regime.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_a_summary_that_is_not_a_summary_is_a_failed_job_and_a_broken_overrides_file_is_named(tmp_path):
    """summary.json holding [] / null / a number (once an AttributeError), and .hydra/overrides.yaml
    that is not YAML or not a list (once a YAML traceback): a failed job in the report, or one line."""
    for name, text in (("a", "[]"), ("b", "null"), ("c", "3")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    body = main([str(tmp_path), "--plot", ""])
    assert "No job completed" in body and "| configuration |" not in body  # no table with no columns
    assert [line for line in body.splitlines() if line.startswith("- ")] == [
        "- `(default)` (a): summary.json holds list, not a summary",
        "- `(default)` (b): summary.json holds NoneType, not a summary",
        "- `(default)` (c): summary.json holds int, not a summary"]
    (tmp_path / "d" / ".hydra").mkdir(parents=True)
    (tmp_path / "d" / "summary.json").write_text(json.dumps({"seed": 0, "val/accuracy": 0.5}))
    assert "| (default) | 1 | 0.500 |" in main([str(tmp_path), "--metrics", "val/accuracy", "--plot", ""])
    for text, says in ((": [bad", "is not valid YAML"), ("a: 1", "is not a list of overrides")):
        (tmp_path / "d" / ".hydra" / "overrides.yaml").write_text(text)
        with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'd' / '.hydra' / 'overrides.yaml'} {says}"):
            main([str(tmp_path), "--plot", ""])
