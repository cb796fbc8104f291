"""The report: a markdown pivot of summary.json files, mean and 95% CI over seeds."""
import json
import math

import matplotlib.image

from sweeps.report import line_styles, main, mean_ci


def test_mean_and_confidence_interval_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-9)
    assert math.isnan(mean_ci([5.0])[1])


def test_report_pivots_runs_by_algorithm_and_sampler(tmp_path):
    runs = [("gvpo", "on_policy", 0, 0.1), ("gvpo", "on_policy", 1, 0.3), ("dpo", "reference", 0, 2.0)]
    for i, (algorithm, sampler, seed, kl) in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(
            {"algorithm": algorithm, "sampler": sampler, "seed": seed, "exact/kl_to_optimum": kl}))
    table = main([str(tmp_path), "--metrics", "exact/kl_to_optimum", "--pivot", "algorithm,sampler", "--plot", "",
                  "--out", str(tmp_path / "table.md")])
    lines = table.splitlines()
    assert lines[0] == "exact/kl_to_optimum, mean ± 95% CI over seeds"
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
    assert pivot.splitlines()[2] == "| algorithm \\ lr | 1e-05 | 0.0001 | 0.001 | 0.01 |"
    text = main([str(tmp_path), "--metrics", "val/accuracy", "--plot", "val/accuracy", "--x", "", "--vs", "lr"])
    assert "![val_accuracy_vs_final_lr](val_accuracy_vs_final_lr.png)" in text
    image = matplotlib.image.imread(tmp_path / "val_accuracy_vs_final_lr.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
