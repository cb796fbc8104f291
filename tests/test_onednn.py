"""models/onednn.py: linear layers through oneDNN without autograd, and when the reordered weights are renewed."""
import pytest
import torch
from torch import nn

from ptlab.models.build import add_lora, prepare_policy
from ptlab.models.generation import HFGenerator
from ptlab.models.lm import token_logprobs
from ptlab.models.onednn import available, onednn_linears
from ptlab.models.reference import AdapterReference, FrozenReference
from tests.conftest import tiny_lm
from ptlab.training.rollout import encode_prompts, encode_responses

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")


def float_policy(tokenizer, onednn=True, seed=0):
    return prepare_policy(tiny_lm(tokenizer, seed=seed).float(), onednn=onednn)


def batch(tokenizer):
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1 + 2=", "47 + 38=", "9 - 60="])
    response_ids, response_mask = encode_responses(tokenizer, ["3", "85", "-51"])
    return prompt_ids, prompt_mask, response_ids, response_mask


def test_onednn_forward_gives_f_linears_values_and_leaves_the_layers_as_they_were(tokenizer):
    model = float_policy(tokenizer)
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    ids = encode_prompts(tokenizer, ["1 + 2=", "47 + 38="])[0]
    with torch.inference_mode():
        plain = model(ids).logits
        with onednn_linears(model):
            assert all("forward" in vars(m) for m in layers)  # every linear layer, the LM head included
            ours = model(ids).logits
    assert torch.allclose(ours, plain, rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(m) for m in layers)
    with pytest.raises(RuntimeError), onednn_linears(model):
        raise RuntimeError("a failure inside the context")
    assert not any("forward" in vars(m) for m in layers)  # restored after a failure too


def test_autograd_and_models_that_did_not_ask_take_f_linear_bit_for_bit(tokenizer):
    model = float_policy(tokenizer)
    prompt_ids, prompt_mask, response_ids, response_mask = batch(tokenizer)
    plain = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)  # with autograd
    plain.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with onednn_linears(model):
        ours = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
        ours.sum().backward()
    assert torch.equal(ours, plain) and all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    off = float_policy(tokenizer, onednn=False)
    with torch.no_grad(), onednn_linears(off):
        assert not any("forward" in vars(m) for m in off.modules())  # model.onednn=false: a no-op


def test_a_policy_is_reordered_again_after_an_optimiser_step_that_leaves_no_trace(tokenizer):
    """Fused AdamW changes the weights in place without bumping their version counters, so the
    policy's reordered weights must not outlive a context: the log-probs after a step are those of
    the new weights (they would be the old ones if the reordered weights were kept)."""
    model = float_policy(tokenizer)
    prompt_ids, prompt_mask, response_ids, response_mask = batch(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        before = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    versions = [p._version for p in model.parameters()]
    token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask).sum().backward()
    optimizer.step()
    assert [p._version for p in model.parameters()] == versions  # the step left no trace
    with torch.no_grad():
        after = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
        model.onednn_inference = False
        expected = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    assert (after - before).abs().max() > 1e-2
    assert torch.allclose(after, expected, rtol=1e-5, atol=1e-5)


def test_the_frozen_reference_keeps_its_reordered_weights_until_a_visible_write(tokenizer):
    policy = float_policy(tokenizer)
    reference = FrozenReference(policy)
    prompt_ids, prompt_mask, response_ids, response_mask = batch(tokenizer)
    rollout = type("Rollout", (), dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                                       response_mask=response_mask))
    first = reference.logprobs(rollout)
    kept = dict(reference.onednn_weights)
    assert len(kept) == sum(type(m) is nn.Linear for m in policy.modules())
    assert torch.equal(reference.logprobs(rollout), first)
    assert all(reference.onednn_weights[k] is v for k, v in kept.items())  # not reordered again
    other = float_policy(tokenizer, seed=1)
    reference.model.load_state_dict(other.state_dict())  # a checkpoint's weights: version counters move
    loaded = reference.logprobs(rollout)
    other.onednn_inference = False
    with torch.no_grad():
        expected = token_logprobs(other, prompt_ids, prompt_mask, response_ids, response_mask)
    assert torch.allclose(loaded, expected, rtol=1e-5, atol=1e-5) and (loaded - first).abs().max() > 1e-2


def test_lora_policy_and_its_adapter_reference_run_through_onednn(tokenizer):
    """Adapters on: their delta weights folded into one reordered weight; off (pi_ref): the base layers."""
    model = add_lora(tiny_lm(tokenizer).float(), r=4)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # nonzero, so the adapters change the log-probs
            torch.nn.init.normal_(parameter, std=0.5)
    model.onednn_inference = True
    prompt_ids, prompt_mask, response_ids, response_mask = batch(tokenizer)
    rollout = type("Rollout", (), dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                                       response_mask=response_mask))
    from peft.tuners.lora.layer import Linear as LoraLinear

    lora_layers = [m for m in model.modules() if type(m) is LoraLinear]
    with torch.no_grad(), onednn_linears(model):  # each LoRA layer one multiply by W + B A * scaling
        assert lora_layers and all("forward" in vars(m) for m in lora_layers)
        ours = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    reference = AdapterReference(model).logprobs(rollout)
    model.onednn_inference = False
    with torch.no_grad():
        plain = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    plain_reference = AdapterReference(model).logprobs(rollout)
    assert torch.allclose(ours, plain, rtol=1e-5, atol=1e-5) and torch.allclose(reference, plain_reference, rtol=1e-5, atol=1e-5)
    assert (plain - plain_reference).abs().max() > 1e-2  # the adapters are on in one and off in the other


def test_sampling_through_onednn_draws_from_the_same_distribution(tokenizer):
    """Greedy decoding (argmax of logits equal to ~1e-6) gives the plain decode's tokens, and the
    generator restores the layers afterwards."""
    model = float_policy(tokenizer, seed=5)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, ["1 + 2=", "47 + 38=", "9 - 60=", "5="])
    ours, mask = HFGenerator(max_new_tokens=7)(model, tokenizer, prompt_ids, prompt_mask, greedy=True)
    model.onednn_inference = False
    plain, plain_mask = HFGenerator(max_new_tokens=7)(model, tokenizer, prompt_ids, prompt_mask, greedy=True)
    assert torch.equal(ours * mask, plain * plain_mask) and not any("forward" in vars(m) for m in model.modules())
