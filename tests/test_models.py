"""Tokenizer, token log-probs under left padding, batched sampling, the frozen reference."""
import pytest
import torch

from ptlab.models.generation import HFGenerator, response_mask_after_eos
from ptlab.models.lm import token_logprobs
from ptlab.models.reference import FrozenReference
from tests.conftest import tiny_lm
from ptlab.training.rollout import Rollout, encode_prompts, encode_responses


def test_char_tokenizer_round_trip_and_specials(tokenizer):
    ids = tokenizer("47 + 38=").input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 1 + len("47 + 38=")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "47 + 38="
    response_ids, mask = encode_responses(tokenizer, ["85", "-7"])
    assert response_ids[0].tolist()[-1] == tokenizer.eos_token_id and mask.tolist() == [[1, 1, 1], [1, 1, 1]]


def test_response_mask_stops_after_first_eos():
    eos = 2
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 5, 2, 0]])
    assert response_mask_after_eos(ids, eos).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_logprobs_do_not_depend_on_left_padding(tokenizer, model):
    prompts, responses = ["1 + 2=", "47 + 38="], ["3", "85"]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    response_ids, response_mask = encode_responses(tokenizer, responses)
    batched = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    for i in range(2):
        alone_ids, alone_mask = encode_prompts(tokenizer, [prompts[i]])
        r_ids, r_mask = encode_responses(tokenizer, [responses[i]])
        alone = token_logprobs(model, alone_ids, alone_mask, r_ids, r_mask)
        assert torch.allclose(batched[i, : r_ids.shape[1]], alone[0], atol=1e-10)
    # and they are the log-probs of a softmax: the first token's log-prob matches a direct forward
    ids = tokenizer(prompts[1], return_tensors="pt").input_ids
    direct = torch.log_softmax(model(ids).logits[0, -1], -1)[response_ids[1, 0]]
    assert torch.allclose(batched[1, 0], direct, atol=1e-10)


def test_greedy_generation_matches_unpadded_generation(tokenizer):
    model = tiny_lm(tokenizer, seed=3).float()
    generator = HFGenerator(max_new_tokens=5)
    prompts = ["1 + 2=", "47 + 38=", "9 - 60="]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    batched, batched_mask = generator(model, tokenizer, prompt_ids, prompt_mask, greedy=True)
    for i, prompt in enumerate(prompts):
        ids, mask = encode_prompts(tokenizer, [prompt])
        alone, _ = generator(model, tokenizer, ids, mask, greedy=True)
        n = int(batched_mask[i].sum())
        assert batched[i, :n].tolist() == alone[0, :n].tolist()
    assert len({tuple(row.tolist()) for row in batched}) > 1  # not a degenerate constant output


def test_sampled_tokens_follow_the_policy(tokenizer):
    """Frequencies of the first sampled token match softmax(logits) at temperature 1."""
    model = tiny_lm(tokenizer, seed=4).float()
    torch.manual_seed(0)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["5="] * 4000)
    sampled, _ = HFGenerator(max_new_tokens=1)(model, tokenizer, prompt_ids, prompt_mask)
    probs = torch.softmax(model(prompt_ids[:1]).logits[0, -1].detach(), -1)
    freq = torch.bincount(sampled[:, 0], minlength=len(probs)).float() / 4000
    assert (freq - probs).abs().max() < 0.03


def test_reference_is_a_frozen_copy(tokenizer, model):
    reference = FrozenReference(model)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1 + 2="])
    response_ids, response_mask = encode_responses(tokenizer, ["3"])
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, torch.ones(1), 1)
    before = reference.logprobs(rollout)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert torch.equal(reference.logprobs(rollout), before)
    assert not any(p.requires_grad for p in reference.parameters())
    reference.train()
    assert not reference.model.training


def test_select_groups_keeps_whole_groups_in_order():
    rollout = Rollout(torch.arange(6).view(6, 1), torch.ones(6, 1), torch.arange(6).view(6, 1), torch.ones(6, 1),
                      torch.tensor([0.0, 1, 2, 3, 4, 5]), group_size=2, prompts=list("abcdef"), completions=list("uvwxyz"))
    part = rollout.select_groups(torch.tensor([2, 0]))
    assert part.rewards.tolist() == [4, 5, 0, 1] and part.prompts == list("efab") and part.num_groups == 2


def test_lean_decoding_matches_hugging_face_generate_greedily(tokenizer):
    model = tiny_lm(tokenizer, seed=5).float().eval()
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1 + 2=", "47 + 38=", "9 - 60=", "5="])
    ours, mask = HFGenerator(max_new_tokens=7)(model, tokenizer, prompt_ids, prompt_mask, greedy=True)
    theirs = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=7, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)[:, prompt_ids.shape[1]:]
    theirs_mask = response_mask_after_eos(theirs, tokenizer.eos_token_id)
    assert torch.equal(mask[:, : theirs.shape[1]], theirs_mask)
    assert torch.equal(ours[:, : theirs.shape[1]] * mask[:, : theirs.shape[1]], theirs * theirs_mask)


def test_top_p_samples_the_renormalised_nucleus_and_never_a_suppressed_token(tokenizer):
    model = tiny_lm(tokenizer, seed=4).float()
    model.generation_config.suppress_tokens = [7, 8]
    probs = torch.softmax(model(tokenizer(["5="], return_tensors="pt").input_ids).logits[0, -1].detach(), -1)
    probs[[7, 8]] = 0
    probs /= probs.sum()
    ordered, order = probs.sort(descending=True)
    nucleus = order[: int((ordered.cumsum(0) - ordered < 0.6).sum())]
    expected = torch.zeros_like(probs)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    torch.manual_seed(0)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["5="] * 4000)
    sampled, _ = HFGenerator(max_new_tokens=1, top_p=0.6)(model, tokenizer, prompt_ids, prompt_mask)
    freq = torch.bincount(sampled[:, 0], minlength=len(probs)).float() / 4000
    assert freq[7] == 0 and freq[8] == 0 and freq[expected == 0].sum() == 0
    assert (freq - expected).abs().max() < 0.03


def test_a_repeated_prompt_is_read_once_and_gives_the_same_responses(tokenizer):
    model = tiny_lm(tokenizer, seed=3).float()
    generator = HFGenerator(max_new_tokens=6)
    prompts = ["1 + 2="] * 3 + ["47 + 38="] * 2  # two groups, as a sampler lays them out
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    grouped, mask = generator(model, tokenizer, prompt_ids, prompt_mask, greedy=True)
    for prompt, rows in (("1 + 2=", [0, 1, 2]), ("47 + 38=", [3, 4])):
        ids, alone_mask = encode_prompts(tokenizer, [prompt])
        alone, _ = generator(model, tokenizer, ids, alone_mask, greedy=True)
        for i in rows:
            n = int(mask[i].sum())
            assert grouped[i, :n].tolist() == alone[0, :n].tolist()


def test_chosen_logprobs_match_autograd_through_log_softmax_and_gather():
    """The fused log-prob (models/lm.py ChosenLogprobs): values, entropy and gradient equal the
    generic form's, in double precision, on random logits with a random upstream gradient."""
    from ptlab.models.lm import ChosenLogprobs

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    ids, upstream = torch.randint(0, 11, (3, 5)), torch.randn(3, 5, dtype=torch.float64)
    chosen, entropy = ChosenLogprobs.apply(logits, ids, True)
    (grad,) = torch.autograd.grad((chosen * upstream).sum(), logits)
    logp = torch.log_softmax(logits, -1)
    expected = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), logits)
    assert torch.allclose(chosen, expected, atol=1e-12) and torch.allclose(grad, expected_grad, atol=1e-12)
    assert torch.allclose(entropy, -(logp.exp() * logp).sum(-1), atol=1e-12) and not entropy.requires_grad
    assert torch.autograd.gradcheck(lambda x: ChosenLogprobs.apply(x, ids, False)[0], (logits,))


def test_token_logprobs_take_the_same_values_and_gradients_on_the_fused_path(monkeypatch):
    """A vocabulary of FUSED_MIN_VOCAB tokens or more takes ChosenLogprobs: log-probs, the detached
    entropy and the weights' gradient equal the generic path's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import ptlab.models.lm as lm

    config = LlamaConfig(vocab_size=lm.FUSED_MIN_VOCAB + 7, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).double()
    prompt_ids, response_ids = torch.randint(0, 1031, (4, 3)), torch.randint(0, 1031, (4, 5))
    prompt_mask, response_mask = torch.tensor([[0, 1, 1]] * 4), torch.tensor([[1] * 5, [1] * 3 + [0] * 2] * 2)

    def run():
        model.zero_grad()
        logprobs, entropy = lm.token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, entropy="detached")
        (logprobs * torch.arange(20, dtype=torch.float64).view(4, 5)).sum().backward()
        return logprobs.detach(), entropy, [p.grad.clone() for p in model.parameters()]

    fused = run()
    monkeypatch.setattr(lm, "FUSED_MIN_VOCAB", 10**9)
    generic = run()
    assert torch.allclose(fused[0], generic[0], atol=1e-12) and torch.allclose(fused[1], generic[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(fused[2], generic[2]))
    assert fused[0][1, 3:].abs().sum() == 0  # nothing beyond a response's end


def logprobs_and_gradients(model, batch, upstream, entropy, buckets: int, positions: list):
    """token_logprobs of `batch` (prompt ids, prompt mask, response ids, response mask), backward of
    sum(upstream * log-probs) (+ the entropy's sum when entropy="grad"): (log-probs, entropy, the
    trainable weights' gradients, the positions the model saw per forward, as `positions` records them)."""
    import ptlab.models.lm as lm

    model.zero_grad()
    positions.clear()
    out = lm.token_logprobs(model, *batch, entropy=entropy, buckets=buckets)
    logprobs, token_entropy = out if entropy else (out, torch.zeros(()))
    loss = (logprobs * upstream).sum() + (token_entropy.sum() if entropy == "grad" else 0)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return logprobs.detach(), token_entropy.detach(), grads, list(positions)


@pytest.mark.parametrize("entropy,fused", [("grad", False), ("detached", True), (None, False)])
def test_length_buckets_give_the_whole_batch_values_and_gradients_from_fewer_positions(tokenizer, monkeypatch, entropy, fused):
    """token_logprobs(buckets=3) sorts rows by response length, runs each bucket cut to its longest
    row and puts the outputs back: log-probs, entropy and the weights' gradient (in float64) equal the
    one-batch forward's, rows in their places, and the model sees fewer positions than B x (P + T)."""
    import ptlab.models.lm as lm

    if fused:  # the ChosenLogprobs path of large vocabularies
        monkeypatch.setattr(lm, "FUSED_MIN_VOCAB", 0)
    model = tiny_lm(tokenizer, seed=3)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1 + 2=", "47 + 38=", "5=", "12 + 3 + 4=", "9 + 9=", "1="])
    responses = ["12345678", "3", "", "55", "1234", "9876543"]  # lengths 9, 2, 1, 3, 5, 8 with <eos>
    response_ids, response_mask = encode_responses(tokenizer, responses)
    upstream = torch.randn(response_mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    positions = []
    model.register_forward_pre_hook(lambda module, args, kwargs: positions.append(kwargs["input_ids"].numel()),
                                    with_kwargs=True)

    batch = (prompt_ids, prompt_mask, response_ids, response_mask)
    whole, bucketed = (logprobs_and_gradients(model, batch, upstream, entropy, buckets, positions) for buckets in (1, 3))
    assert whole[3] == [response_mask.numel() + prompt_mask.numel()]
    assert len(bucketed[3]) == 3 and sum(bucketed[3]) < whole[3][0] * 0.75
    assert bucketed[0].shape == whole[0].shape and torch.allclose(bucketed[0], whole[0], atol=1e-12)
    assert torch.allclose(bucketed[1], whole[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(bucketed[2], whole[2]))
    assert bucketed[0][1, 2:].abs().sum() == 0 and bucketed[0][1, :2].abs().min() > 0  # row 1 is 2 tokens, in place


def test_fewest_buckets_stops_splitting_where_a_split_saves_no_padding():
    """Rows sorted by response length; a bucket costs its rows x (longest prompt + longest response)."""
    from ptlab.models.lm import fewest_buckets

    prompts = torch.full((8,), 2)
    # 4 buckets: 2*(2+1) + 2*(2+1) + 2*(2+8) + 2*(2+8) = 52 positions; 2 buckets: 4*3 + 4*10 = 52; 1: 8*10 = 80
    assert fewest_buckets(prompts, torch.tensor([1, 1, 1, 1, 8, 8, 8, 8]), most=4) == 2
    # 4 buckets: 2*3 + 2*4 + 2*6 + 2*10 = 46; 3 buckets (3, 3, 2 rows): 3*4 + 3*6 + 2*10 = 50; 2: 4*4 + 4*10 = 56
    assert fewest_buckets(prompts, torch.tensor([1, 1, 2, 2, 4, 4, 8, 8]), most=4) == 4  # 50 > 1.05 * 46
    assert fewest_buckets(prompts, torch.tensor([1, 1, 2, 2, 4, 4, 8, 8]), most=4, slack=0.1) == 3  # 50 <= 50.6
    assert fewest_buckets(prompts, torch.full((8,), 6), most=4) == 1  # equal lengths: one batch



@pytest.mark.parametrize("entropy,fused,buckets,lora", [(None, False, 1, False), ("grad", False, 3, False),
                                                        ("detached", True, 3, False), (None, False, 2, True),
                                                        (None, True, 2, True)])
def test_shared_prompts_give_the_whole_sequence_values_and_gradients_from_fewer_positions(
        tokenizer, monkeypatch, entropy, fused, buckets, lora):
    """Groups that repeat a prompt: each distinct prompt runs once and its responses read its keys and
    values. Log-probs, entropy and every weight's gradient (float64) equal the whole-sequence forward's
    (the shared path switched off), rows in place, with fewer positions through the model."""
    import ptlab.models.lm as lm
    from ptlab.models.build import add_lora

    if fused:  # the ChosenLogprobs path of large vocabularies
        monkeypatch.setattr(lm, "FUSED_MIN_VOCAB", 0)
    model = tiny_lm(tokenizer, seed=4).double()
    if lora:
        model = add_lora(model, r=2)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # nonzero, so the adapters change the log-probs
                torch.nn.init.normal_(parameter, std=0.3)
    # groups of 3, 2 and 3 responses; the prompts differ in length (left padding) and repeat out of order
    prompts = ["47 + 38=", "5=", "47 + 38=", "12 + 3 + 4=", "5=", "47 + 38=", "12 + 3 + 4=", "12 + 3 + 4="]
    responses = ["12345678", "3", "", "55", "1234", "9876543", "2", "666"]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    response_ids, response_mask = encode_responses(tokenizer, responses)
    upstream = torch.randn(response_mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    positions = []
    embedding = model.get_input_embeddings()
    embedding.register_forward_pre_hook(lambda module, args: positions.append(args[0].numel()))
    head_rows = []  # the fused path runs the LM head once, on the response tokens only
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: head_rows.append(args[0].shape[:-1]))
    assert lm.shares_prompts(model, prompt_ids, prompt_mask)

    batch = (prompt_ids, prompt_mask, response_ids, response_mask)
    shared = logprobs_and_gradients(model, batch, upstream, entropy, buckets, positions)
    if fused:  # and the embedding once: one lookup of the prompts and every row's inputs
        assert head_rows == [(int(response_mask.sum()),)] and len(shared[3]) == 1
    with torch.no_grad():
        shared_no_grad = lm.token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, buckets=buckets)
    monkeypatch.setattr(lm, "shares_prompts", lambda *args: False)
    whole = logprobs_and_gradients(model, batch, upstream, entropy, buckets, positions)
    assert torch.allclose(shared[0], whole[0], atol=1e-12) and torch.allclose(shared_no_grad, whole[0], atol=1e-12)
    assert torch.allclose(shared[1], whole[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(shared[2], whole[2])) and any(g.abs().sum() > 0 for g in shared[2])
    assert shared[0][1, 2:].abs().sum() == 0 and shared[0][1, :2].abs().min() > 0  # row 1 is 2 tokens, in place
    # 3 distinct prompts of 11 columns without the last, 8 rows of at most 9 tokens: at most 3 x 11 + 8 x 9
    assert sum(shared[3]) <= 3 * (prompt_ids.shape[1] - 1) + response_mask.numel() < sum(whole[3])



@pytest.mark.parametrize("lora,buckets", [(False, 1), (True, 3)])
def test_the_critic_reads_a_shared_prompt_once_with_the_whole_sequence_values_and_gradients(
        tokenizer, monkeypatch, lora, buckets):
    """PPO's critic (models/value.py) runs a prompt its group repeats once and its rows in buckets of
    similar response length, as the log-probs do: values and the gradients of its weights (float64)
    equal one forward of the whole sequences, rows in place, with fewer positions through its decoder."""
    import ptlab.models.value as value
    from ptlab.models.build import add_lora

    policy = tiny_lm(tokenizer, seed=5).double()
    if lora:
        policy = add_lora(policy, r=2)
    critic = value.critic_for(policy, buckets=buckets)
    torch.nn.init.normal_(critic.head.weight, std=1.0)  # nonzero, so the values depend on the hidden states
    prompts = ["47 + 38=", "5=", "47 + 38=", "12 + 3 + 4=", "5=", "47 + 38="]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    response_ids, response_mask = encode_responses(tokenizer, ["12345678", "3", "", "55", "1234", "9876543"])
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, torch.zeros(6), group_size=1)
    upstream = torch.randn(response_mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    positions = []
    critic.body.get_input_embeddings().register_forward_pre_hook(lambda module, args: positions.append(args[0].numel()))

    def run():
        critic.zero_grad()
        positions.clear()
        values = critic(rollout)
        (values * upstream).sum().backward()
        return values.detach(), [p.grad.clone() for p in critic.parameters() if p.grad is not None], sum(positions)

    shared = run()
    monkeypatch.setattr(value, "shares_prompts", lambda *args: False)
    whole = run()
    assert torch.allclose(shared[0], whole[0], atol=1e-12) and shared[0].abs().sum() > 0
    assert len(shared[1]) == len(whole[1]) and all(torch.allclose(a, b, atol=1e-10) for a, b in zip(shared[1], whole[1]))
    assert shared[0][1, 2:].abs().sum() == 0  # row 1 is 2 tokens: nothing beyond
    assert shared[0][1, :2].abs().min() > 0 and shared[0][0].abs().min() > 0  # rows in place after the buckets
    # 3 distinct prompts without their last column, then 6 rows of at most 9 (fewer in buckets)
    assert shared[2] <= 3 * (prompt_ids.shape[1] - 1) + response_mask.numel() < whole[2]
    if buckets > 1:
        assert shared[2] < 3 * (prompt_ids.shape[1] - 1) + response_mask.numel()


def test_shared_prompts_step_aside_where_they_cannot_apply(tokenizer):
    """Distinct prompts, one-column prompts, and gradient checkpointing in training mode (which drops
    the KV cache the shared path fills) take the whole-sequence forward."""
    import ptlab.models.lm as lm

    model = tiny_lm(tokenizer)
    repeated = encode_prompts(tokenizer, ["1 + 2="] * 2 + ["3="] * 2)
    assert lm.shares_prompts(model, *repeated)
    assert not lm.shares_prompts(model, *encode_prompts(tokenizer, ["1 + 2=", "1 + 3=", "3="]))
    assert not lm.shares_prompts(model, repeated[0][:, -1:], repeated[1][:, -1:])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not lm.shares_prompts(model.train(), *repeated)
    assert lm.shares_prompts(model.eval(), *repeated)  # no checkpointing in eval mode
    response_ids, response_mask = encode_responses(tokenizer, ["12", "3", "45", "6"])
    logprobs = token_logprobs(model.train(), *repeated, response_ids, response_mask)
    logprobs.sum().backward()
    assert logprobs[0, :3].abs().min() > 0  # computed, not left at zero by an empty cache


EOS_BIAS = 4.0


def test_sampled_decoding_with_rows_ending_early_draws_what_a_cacheless_loop_draws(tokenizer):
    """The decode keeps finished rows in its preallocated cache until a quarter of them are done, then
    compacts it: every writing row must still get the token a plain loop (a full forward over the
    sequence so far, no cache, one uniform per writing row in row order) draws with the same seed."""
    model = tiny_lm(tokenizer, seed=6).eval()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()[tokenizer.eos_token_id] = EOS_BIAS  # eos in reach at every step
    model.lm_head = head
    prompts = [p for p in ["1 + 2=", "47 + 38=", "9 - 60=", "5="] for _ in range(8)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    generator = HFGenerator(max_new_tokens=12)
    torch.manual_seed(1)
    ours, mask = generator(model, tokenizer, prompt_ids, prompt_mask)
    torch.manual_seed(1)
    expected = torch.full_like(ours, tokenizer.pad_token_id)
    sequence, attention, writing = prompt_ids, prompt_mask, torch.arange(len(prompts))
    for t in range(12):
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=sequence, attention_mask=attention, position_ids=positions).logits[writing, -1]
        token = generator._sample(logits.float())
        expected[writing, t] = token
        step = torch.full((len(prompts), 1), tokenizer.pad_token_id)
        step[writing, 0] = token
        sequence, attention = torch.cat([sequence, step], 1), torch.cat([attention, torch.ones_like(step)], 1)
        writing = writing[token != tokenizer.eos_token_id]
        if not len(writing):
            break
    lengths = mask.sum(-1)
    assert lengths.min() < 6 and lengths.max() == 12 and len(set(lengths.tolist())) > 4  # rows end all along
    assert torch.equal(ours * mask, expected * mask)



def test_shared_prompt_gradients_are_the_same_bit_for_bit_every_time():
    """A prompt's k responses add their gradients into its one forward; on 2 threads those sums must
    run in a fixed order (index_select's backward), not in whatever order threads reach them
    (indexing's backward, index_put with accumulate: gradients differed in the last bits between
    calls here, and runs with the same seed between processes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import ptlab.models.lm as lm

    config = LlamaConfig(vocab_size=99, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, 99, (16, 9), generator=g).repeat_interleave(8, 0)
    response_ids = torch.randint(3, 99, (128, 64), generator=g)
    response_mask = (torch.arange(64)[None] < torch.randint(1, 65, (128, 1), generator=g)).long()
    assert lm.shares_prompts(model, prompt_ids, torch.ones_like(prompt_ids))
    gradients, threads = [], torch.get_num_threads()
    torch.set_num_threads(2)  # this machine's; with one thread any order is fixed
    try:
        for _ in range(3):
            model.zero_grad()
            lm.token_logprobs(model, prompt_ids, torch.ones_like(prompt_ids), response_ids, response_mask, buckets=4).sum().backward()
            gradients.append([p.grad.clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(*gradients))
