"""python -m ptlab.bench: the arithmetic of its table (the timings themselves are figures, not tests)."""
import pytest
import torch

from ptlab.bench.throughput import main, spec, summarise, table


def record(step, generation=0.5, update=1.0, trained=100, parameters=1000):
    return {"step": step, "generation": generation, "scoring": 0.01, "reference": 0.2, "update": update,
            "generated": 50, "trained": trained, "parameters": parameters}


def test_medians_ranges_ratios_and_flops_from_the_kept_steps():
    ours = [{"records": [record(99.0), record(2.0), record(4.0)], "peak": 10.0},
            {"records": [record(99.0), record(3.0, update=0.5), record(5.0)], "peak": 30.0}]
    theirs = [{"records": [record(99.0), record(8.0), record(8.0)], "peak": 20.0}]
    summary = summarise(ours, warmup=1)  # the first step of each worker is left out
    assert summary["steps"] == 4 and summary["step"] == (3.5, 2.0, 5.0) and summary["peak"] == 20.0
    assert summary["generated/s"] == (100.0, 100.0, 100.0)
    assert summary["update GFLOP/s"] == (6 * 1000 * 100 / 1.0 / 1e9, 6e5 / 1e9, 6e5 / 0.5 / 1e9)
    text = table("tiny", {"ptlab-grpo": summary, "trl": summarise(theirs, warmup=1)})
    step_row = next(line for line in text.splitlines() if line.startswith("| step |"))
    assert step_row.endswith("| 0.44 |")  # 3.5 / 8
    assert "update at ptlab-grpo 0%, trl 0% of the peak" in text


def test_bad_arguments_are_refused_before_any_worker_starts():
    with pytest.raises(SystemExit, match="--configs 'huge' is neither one of tiny6, tiny64, smollm2 nor model:"):
        main(["--configs", "huge"])
    assert spec("tiny:16x4:128") == ("tiny", 16, 4, 128)
    with pytest.raises(SystemExit, match="--warmup=6 leaves no step of --steps=6"):
        main(["--warmup", "6", "--steps", "6"])


def test_the_scaling_table_gives_ratios_to_trl_and_time_per_unit():
    from ptlab.bench.throughput import scaling_table

    points = {"tiny:16x2:64": {"ptlab-grpo": {"step": (0.2, 0, 0)}, "trl": {"step": (0.4, 0, 0)}},
              "tiny:16x4:64": {"ptlab-grpo": {"step": (0.4, 0, 0)}, "trl": {"step": (0.5, 0, 0)}}}
    rows = scaling_table("group size", points).splitlines()[2:]
    assert rows == ["| 2 | 0.2 | 0.4 | 0.50 | 100 |", "| 4 | 0.4 | 0.5 | 0.80 | 100 |"]


def test_update_flops_count_a_shared_prompt_once(tokenizer):
    """ptlab runs a prompt its group repeats once (models/lm.py), so its update's FLOPs count that
    prompt once; trained tokens (the tokens scored, the same work for both frameworks) count every copy."""
    from ptlab.bench.throughput import forwarded_tokens, trained_tokens
    from tests.conftest import tiny_lm
    from ptlab.training.rollout import encode_prompts

    model = tiny_lm(tokenizer)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1 + 2="] * 3 + ["30="] * 3)  # 7 and 4 tokens with <bos>
    response_mask = torch.tensor([[1, 1, 0]] * 6)
    assert trained_tokens(prompt_mask, response_mask) == 3 * 7 + 3 * 4 + 12
    assert forwarded_tokens(model, prompt_ids, prompt_mask, response_mask) == 7 + 4 + 12
    distinct_ids, distinct_mask = encode_prompts(tokenizer, ["1 + 2=", "30="])
    assert forwarded_tokens(model, distinct_ids, distinct_mask, response_mask[:2]) == 7 + 4 + 4
    shared = summarise([{"records": [dict(record(1.0), forwarded=25)], "peak": 1.0}], warmup=0)
    assert shared["update GFLOP/s"][0] == 6 * 1000 * 25 / 1e9 and shared["trained/s"][0] == 100.0


@pytest.mark.slow  # three runs with a warm start (about 40 s): the bench, not the library
def test_step_cost_runs_each_lever_and_reads_the_reference_evaluation_back(tmp_path):
    from ptlab.bench.step_cost import main as step_cost
    from tests.test_run import TINY

    rows = step_cost(["--model", "tiny", "--task", "chain_sum", "--steps", "2", "--levers", "4,5,6",
                      "--workdir", str(tmp_path), *TINY])
    assert [row["lever"] for row in rows] == ["64 new tokens", "bf16 + 64 new tokens",
                                              "bf16 + 64 new tokens, reference evaluation read back"]
    assert [row["ref_from_cache"] for row in rows] == [False, False, True]  # the row before wrote the entry
    assert all(row["step"] > 0 and row["update"] > 0 and row["final_eval"] > 0 for row in rows)
    assert all(row["step"] >= row["update"] for row in rows)  # a phase is part of its step
    assert list((tmp_path / "cache" / "evaluations").glob("*.json"))
