"""The warm start stops on an accuracy, not a step count: its calibration prompts are held out of SFT,
its accuracy is the exact expectation of sampling, and it lands on the target between two checks."""
import torch
from datasets import Dataset

from ptlab.models.lm import token_logprobs
from tests.conftest import tiny_lm
from ptlab.training.rollout import encode_prompts, encode_responses
from ptlab.training.warmstart import StopAtAccuracy, calibration_split

ROWS = [{"prompt": f"{a} + {b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]


def test_calibration_prompts_are_whole_prompts_held_out_of_sft():
    data = Dataset.from_list(ROWS * 3 + ROWS[:5])  # prompts repeated, as a generator's draws are
    sft, held = calibration_split(data, 10)
    assert len(held) >= 10 and not set(held["prompt"]) & set(sft["prompt"])
    assert len(sft) + len(held) == len(data)  # every row of a held prompt is held: none left in SFT
    again = calibration_split(Dataset.from_list(list(reversed(ROWS * 3 + ROWS[:5]))), 10)[1]
    assert set(again["prompt"]) == set(held["prompt"])  # chosen by the text's hash, not the order


def test_expected_accuracy_is_the_mean_probability_of_the_answer(tokenizer):
    model = tiny_lm(tokenizer)
    rows = Dataset.from_list(ROWS[:6])
    check = StopAtAccuracy(rows, tokenizer, target=0.5, every=1)
    by_hand = []
    for row in ROWS[:6]:  # one row at a time: no padding anywhere
        prompt, response = encode_prompts(tokenizer, [row["prompt"]]), encode_responses(tokenizer, [row["answer"]])
        by_hand.append(token_logprobs(model, *prompt, *response).sum().exp().item())
    assert abs(check.expected_accuracy(model) - sum(by_hand) / 6) < 1e-6
    assert model.training  # the check leaves the policy's mode as it found it


def test_landing_meets_the_target_between_two_checks(tokenizer):
    model = tiny_lm(tokenizer).float()
    check = StopAtAccuracy(Dataset.from_list(ROWS), tokenizer, target=0.0, every=1, bisections=12)
    before = check.expected_accuracy(model)
    check.below = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompt, response = encode_prompts(tokenizer, [r["prompt"] for r in ROWS]), encode_responses(tokenizer, [r["answer"] for r in ROWS])
    for _ in range(30):  # SFT steps: the accuracy climbs
        optimizer.zero_grad()
        (-token_logprobs(model, *prompt, *response).sum()).backward()
        optimizer.step()
    after = check.expected_accuracy(model)
    assert after > before + 0.05
    check.target = (before + after) / 2
    check.history.append((30, after))
    landed = check.landing(model)
    assert check.target <= landed < check.target + 0.01 * (after - before)
    assert abs(check.expected_accuracy(model) - landed) < 1e-6  # the weights left in the model are the landing's
