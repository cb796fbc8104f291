"""The report: a markdown pivot of summary.json files, mean and 95% CI over seeds."""
import json
import math

from sweeps.report import main, mean_ci


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
