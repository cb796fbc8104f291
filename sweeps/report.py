"""Read a multirun directory's summary.json files and write a markdown table.

    python -m sweeps.report multirun/exact_samplers --metric exact/kl_to_optimum --rows algorithm --columns sampler

Each cell is the mean over seeds with a 95% confidence interval (Student t) and the count of seeds.
"""
import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

# two-sided 95% Student t quantiles by degrees of freedom; 1.96 beyond
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def t95(dof: int) -> float:
    return T95.get(dof) or next((T95[d] for d in sorted(T95) if d >= dof), 1.96)


def load_summaries(directory: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(directory.rglob("summary.json"))]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (nan with one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def fmt(mean: float, half: float, count: int) -> str:
    digits = lambda x: f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3f}"
    return f"{digits(mean)} ± {digits(half)} (n={count})" if not math.isnan(half) else f"{digits(mean)} (n={count})"


def pivot_table(summaries: list[dict], metric: str, rows: str, columns: str) -> str:
    cells = defaultdict(list)
    for summary in summaries:
        if summary.get(metric) is not None:
            cells[(summary[rows], summary[columns])].append(summary[metric])
    row_keys = sorted({r for r, _ in cells}, key=str)
    column_keys = sorted({c for _, c in cells}, key=str)
    lines = [f"| {rows} \\ {columns} | " + " | ".join(map(str, column_keys)) + " |",
             "|---" * (len(column_keys) + 1) + "|"]
    for r in row_keys:
        values = [fmt(*mean_ci(cells[(r, c)]), len(cells[(r, c)])) if cells[(r, c)] else "" for c in column_keys]
        lines.append(f"| {r} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--metric", default="val/accuracy")
    parser.add_argument("--rows", default="algorithm")
    parser.add_argument("--columns", default="sampler")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    table = pivot_table(load_summaries(args.directory), args.metric, args.rows, args.columns)
    if args.out:
        args.out.write_text(f"{args.metric}, mean ± 95% CI over seeds\n\n{table}\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
