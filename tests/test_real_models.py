"""Real-model features on a tiny Hugging Face Llama built locally: chat-template prompts, answer
extraction, reward terms, LoRA (adapters only trained, reference = base), a critic on a LoRA
policy, gradient accumulation, export and reload."""
import copy
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ptlab.algorithms.gvpo import GVPO
from ptlab.models.build import add_lora, check_lora_targets
from ptlab.models.export import export_policy
from ptlab.models.lm import token_logprobs
from ptlab.models.reference import AdapterReference, reference_for
from ptlab.models.value import critic_for
from ptlab.rewards.extract import answer_tag, last_number
from ptlab.rewards.format import Matches
from ptlab.rewards.match import AnswerMatch
from ptlab.rewards.weighted import WeightedSum
from ptlab.errors import ConfigError
from ptlab.tasks.base import TextTask, render_chat
from tests.conftest import rollout_from_lists, tiny_lm
from ptlab.training.module import PostTrainingModule
from ptlab.training.rollout import encode_prompts

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}|{% endfor %}"
                 "{% if add_generation_prompt %}[assistant]{% endif %}")


def logprobs_of(model, rollout):
    return token_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)


@pytest.fixture
def chat_tokenizer(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    return chat


def test_chat_prompts_render_the_template_once_and_encode_to_its_tokens(chat_tokenizer):
    text = render_chat(chat_tokenizer, "4 + 5=", system_prompt="be brief")
    assert text == "[system]be brief|[user]4 + 5=|[assistant]"  # the tokenizer adds <bos> itself
    templated = chat_tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "4 + 5="}],
        add_generation_prompt=True, tokenize=True, return_dict=False)
    ids, _ = encode_prompts(chat_tokenizer, [text])
    assert ids[0].tolist() == list(templated) and ids[0].tolist().count(chat_tokenizer.bos_token_id) == 1


def test_a_task_renders_chat_prompts_and_keeps_the_question(chat_tokenizer, tokenizer):
    task = TextTask(reward=None, chat=True)
    task._train = task._val = __import__("datasets").Dataset.from_list([{"prompt": "2 + 2=", "answer": "4"}])
    task.format_prompts(chat_tokenizer)
    assert task.train_dataset()[0] == {"prompt": "[user]2 + 2=|[assistant]", "answer": "4", "question": "2 + 2="}
    with pytest.raises(ConfigError, match="task.chat=true needs a tokenizer with a chat template, and model=tiny's has none"):
        TextTask(reward=None, chat=True).format_prompts(tokenizer, "model=tiny")


@pytest.mark.parametrize("text,expected", [
    ("17 + 25 = 42, so the answer is 42.", "42"),
    ("The difference is -7", "-7"),
    ("It costs 1,234 dollars.", "1234"),
    ("about 3.5 apples", "3.5"),
    ("no number here", ""),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_answer_tag_takes_the_last_tag_and_scores_against_the_answer():
    assert answer_tag("<answer>3</answer> wait, <answer> 4 </answer>") == "4"
    assert answer_tag("4") == ""
    rows = [{"answer": "4"}] * 3
    assert AnswerMatch("answer_tag")(["<answer>4</answer>", "<answer>4.0</answer>", "4"], rows) == [1.0, 1.0, 0.0]


def test_weighted_terms_add_up_and_accuracy_follows_the_first_term():
    reward = WeightedSum({"correct": {"weight": 1.0, "fn": AnswerMatch("last_number")},
                          "format": {"weight": 0.5, "fn": Matches(r"^\d+$")}})
    completions, rows = ["4", "it is 4", "5"], [{"answer": "4"}] * 3
    assert reward.components(completions, rows) == {"correct": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 1.0]}
    assert reward(completions, rows) == [1.5, 1.0, 0.5]
    with pytest.raises(ConfigError, match="task.reward.terms.bad.fn is not a reward callable"):
        WeightedSum({"bad": {"weight": 1.0, "fn": "not callable"}})


def test_lora_trains_only_adapters_and_its_reference_is_the_base_model(tokenizer):
    base = tiny_lm(tokenizer).float()
    untouched = copy.deepcopy(base)
    policy = add_lora(base, r=4, alpha=8)
    reference = reference_for(policy)
    assert isinstance(reference, AdapterReference) and not isinstance(reference, torch.nn.Module)  # no second copy
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    rollout = rollout_from_lists([1.0, 0.0, 0.5, 0.0], group_size=2, lengths=[3, 2, 4, 1], prompt_len=3)
    base_weights = {name: p.detach().clone() for name, p in policy.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # LoRA's B starts at 0: the first step moves B, the second moves the policy
        optimizer.zero_grad()
        (-logprobs_of(policy, rollout).sum()).backward()
        optimizer.step()
    assert all(torch.equal(p, base_weights[name]) for name, p in policy.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        assert torch.allclose(reference.logprobs(rollout), logprobs_of(untouched, rollout), atol=1e-6)
        assert not torch.allclose(logprobs_of(policy, rollout), logprobs_of(untouched, rollout), atol=1e-3)
    assert policy.training  # the reference's context gave the policy back as it was


def test_lora_targets_that_do_not_exist_are_refused_naming_the_layers(tokenizer):
    model = tiny_lm(tokenizer)
    with pytest.raises(ConfigError, match=r"model.lora.target_modules=\['qkv'\] names qkv, not a linear layer of "
                                          r"LlamaForCausalLM; its linear layers are: down_proj, gate_proj, k_proj"):
        check_lora_targets(model, {"r": 4, "target_modules": ["qkv"]})
    check_lora_targets(model, {"r": 4, "target_modules": ["q_proj", "v_proj"]})


def test_ppo_critic_on_a_lora_policy_reads_hidden_states_and_trains_its_own_adapters(tokenizer):
    policy = add_lora(tiny_lm(tokenizer).float(), r=4)
    critic = critic_for(policy)
    rollout = rollout_from_lists([1.0, 0.0], group_size=2, lengths=[3, 2], prompt_len=3)
    values = critic(rollout)
    assert values.shape == rollout.response_mask.shape and torch.all(values == 0)  # zero head at the start
    trainable = {name for name, p in critic.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable and all("lora_" in name or name.startswith("head.") for name in trainable)
    assert not set(map(id, critic.parameters())) & set(map(id, policy.parameters()))  # its own weights


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "group-mean-token-sum"])
def test_accumulated_micro_batches_give_the_whole_batch_gradient(tokenizer, loss_agg):
    policy = tiny_lm(tokenizer)
    module = PostTrainingModule(policy=policy, tokenizer=tokenizer, algorithm=GVPO(beta=0.1, group_size=2, loss_agg=loss_agg),
                                sampler=None, reference=None, optimizer=None, entropy_coef=0.05)
    rollout = rollout_from_lists([1.0, 0.0, 0.5, 0.0, 0.2, 0.9], group_size=2, lengths=[3, 2, 4, 1, 2, 3], prompt_len=3)
    with torch.no_grad():
        rollout.ref_logprobs = logprobs_of(policy, rollout) - 0.1 * rollout.response_mask

    def gradient(parts):
        policy.zero_grad()
        for part in parts:
            part = copy.copy(part)
            part.sampler_logprobs = None
            module._loss(part)[0].backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    totals = (6, int(rollout.response_mask.sum()))
    parts = [rollout.select_groups(torch.tensor(groups)).trimmed() for groups in ([0], [1, 2])]
    assert parts[0].response_mask.shape[1] == 3  # its own longest response, not the batch's
    for part in parts:
        part.totals = totals
    whole = gradient([rollout])
    assert whole.abs().max() > 1e-4 and torch.allclose(gradient(parts), whole, atol=1e-10)


@pytest.mark.parametrize("lora", [False, True])
def test_an_exported_policy_reloads_with_the_same_logprobs(tokenizer, tmp_path, lora):
    policy = tiny_lm(tokenizer).float()
    if lora:
        policy = add_lora(policy, r=4)
        torch.nn.init.normal_(next(p for n, p in policy.named_parameters() if "lora_B" in n), std=0.5)
    rollout = rollout_from_lists([1.0, 0.0], group_size=2, lengths=[3, 2], prompt_len=3)
    with torch.no_grad():
        expected = logprobs_of(policy.eval(), rollout)
    export_policy(policy, tokenizer, tmp_path / "merged", "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(logprobs_of(reloaded, rollout), expected, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    if lora:
        assert any("lora" in n for n, _ in policy.named_parameters())  # the live policy keeps its adapters
        export_policy(policy, tokenizer, tmp_path / "adapter", "adapter")
        assert (tmp_path / "adapter" / "adapter_config.json").exists()
        with_adapter = PeftModel.from_pretrained(tiny_lm(tokenizer).float(), tmp_path / "adapter").eval()
        with torch.no_grad():
            assert torch.allclose(logprobs_of(with_adapter, rollout), expected, atol=1e-5)
        # a model ptlab knows the public name of (a packaged GGUF model) exports an adapter naming it, not a cache path
        policy.get_base_model().public_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
        export_policy(policy, tokenizer, tmp_path / "named", "adapter")
        config = json.loads((tmp_path / "named" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_log_probs_made_in_trimmed_parts_equal_the_whole_batch(tokenizer):
    from ptlab.training.rollout import Rollout, encode_responses

    policy = tiny_lm(tokenizer)
    module = PostTrainingModule(policy=policy, tokenizer=tokenizer, algorithm=GVPO(beta=0.1, group_size=2), sampler=None,
                                reference=None, optimizer=None, accumulate_grad_batches=3)
    prompts = ["1=", "1=", "47 + 38=", "47 + 38=", "5 - 2=", "5 - 2="]  # left padding differs by group
    responses = ["2", "33", "85", "8", "3", "-1234"]  # so does right padding
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    response_ids, response_mask = encode_responses(tokenizer, responses)
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, torch.zeros(6), group_size=2)
    part = rollout.select_groups(torch.tensor([0])).trimmed()
    assert part.prompt_ids.shape[1] == len("1=") + 1 and part.response_ids.shape[1] == 3  # own padding only
    with torch.no_grad():
        whole = module.policy_logprobs(rollout)
        assert torch.allclose(module._in_parts(module.policy_logprobs, rollout), whole, atol=1e-12)


def test_a_reward_model_scores_each_completion_as_its_own_forward_does(tokenizer, tmp_path):
    """A tiny sequence classifier built from a config, saved as a local directory: scored in batches
    (padded) it gives each (prompt, completion) the logit a forward of that text alone gives."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from ptlab.rewards.model import RewardModel

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reward = RewardModel(str(tmp_path / "rm"), batch_size=3)
    rows = [{"prompt": p, "answer": "x"} for p in ("1 + 2=", "47 + 38=", "5=", "9 - 9=")]
    completions = ["3", "85", "-1234", "0"]
    scores = reward(completions, rows)
    model = LlamaForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        alone = [model(**tokenizer(row["prompt"] + c, return_tensors="pt")).logits[0, 0].item() for c, row in zip(completions, rows)]
    assert scores == pytest.approx(alone, abs=1e-5) and len(set(round(s, 4) for s in scores)) == 4
    from ptlab.rewards import score

    assert score(reward, completions, rows)[0] == pytest.approx(alone, abs=1e-5)  # through ptlab's checks


def test_lora_adapters_are_the_same_whatever_the_process_drew_before(tokenizer):
    """Once drawn from the process's RNG: a SmolLM2 run that converted its model first (drawing random
    initial weights) trained other adapters than the same command with the model cached."""
    base_one, base_two = tiny_lm(tokenizer).float(), tiny_lm(tokenizer).float()  # (tiny_lm seeds itself)
    first = add_lora(base_one, r=4)
    torch.rand(1000)  # anything drawn in between: a conversion, another job in the same worker
    second = add_lora(base_two, r=4)
    pairs = [(a, b) for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()) if "lora_A" in name]
    assert pairs and all(torch.equal(a, b) for a, b in pairs)
