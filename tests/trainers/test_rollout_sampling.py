"""The text rollout's own sampler (trainers/objectives/rollout.py): each prompt prefilled once
for its group, draws from the same distribution as `generate()`, seeded."""

from __future__ import annotations

import pytest
import torch

from omnitune.modalities.base import get_modality
from omnitune.trainers.config import load_run_config
from omnitune.trainers.objectives import get_objective
from omnitune.trainers.objectives.rollout import draw, sample, shares_prompts


def test_inverse_cdf_draws_follow_the_distribution_and_never_a_zero():
    probabilities = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20_000, 1)
    torch.manual_seed(0)
    drawn = draw(probabilities)
    counts = torch.bincount(drawn, minlength=5).float() / len(drawn)
    assert counts[1] == 0 and counts[4] == 0
    # 20,000 draws: the standard error of a share near 0.3 is 0.003.
    assert torch.allclose(counts, probabilities[0], atol=0.015), counts


@pytest.fixture(scope="module")
def rollout_setup(tiny_model, text_data, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model("text")
    path = tmp_path_factory.mktemp("rollout") / "run.yaml"
    path.write_text(
        f"model: {{name_or_path: {folder}, modality: text}}\n"
        f"data: {{train: {text_data['train']}, eval: {text_data['eval']}}}\n"
        "objective: {name: grpo, num_generations: 4, max_new_tokens: 10}\n"
        "train: {max_steps: 1}\n"
    )
    config = load_run_config(path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder)
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = get_peft_model(base, lora)
    modality = get_modality("text")
    items = get_objective("grpo").data(modality, config.data.train, config, tokenizer, True)
    return config, tokenizer, policy, modality, [items[i] for i in range(6)]


def test_the_shared_prompt_sampler_decodes_as_generate_does(rollout_setup):
    """At a temperature near 0 sampling is greedy: the prefilled-once, cache-repeated decode
    must then give `generate()`'s greedy completions for every sample of every prompt, which
    checks the prompt positions, the repeated cache, the padding and the stop."""
    config, tokenizer, policy, modality, items = rollout_setup
    config.objective.temperature = 1e-4
    assert shares_prompts(policy, modality)
    rollout = sample(policy, tokenizer, modality, items, config, seed=3)

    inputs = modality.prompt_batch(tokenizer, items, config)
    greedy = policy.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=config.objective.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    expected = tokenizer.batch_decode(
        greedy[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert rollout.texts == [text for text in expected for _ in range(4)]
    assert torch.equal(rollout.prompt_ids, inputs["input_ids"].repeat_interleave(4, 0))


def test_the_same_seed_draws_the_same_rollout_and_suppressed_tokens_never_appear(
    rollout_setup, monkeypatch
):
    config, tokenizer, policy, modality, items = rollout_setup
    config.objective.temperature = 1.5  # spread the draws over the vocabulary
    first = sample(policy, tokenizer, modality, items, config, seed=7)
    again = sample(policy, tokenizer, modality, items, config, seed=7)
    other = sample(policy, tokenizer, modality, items, config, seed=8)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    sampled = first.completion_ids[first.completion_mask.bool()]
    sampled = sampled[sampled != tokenizer.eos_token_id]
    common = int(torch.bincount(sampled).argmax())
    monkeypatch.setattr(
        "omnitune.trainers.objectives.rollout.media_token_ids", lambda processor: (common,)
    )
    suppressed = sample(policy, tokenizer, modality, items, config, seed=7)
    assert suppressed.suppressed == (common,)
    assert not (suppressed.completion_ids[suppressed.completion_mask.bool()] == common).any()


def test_scoring_over_the_shared_prompt_equals_scoring_each_sample_whole(rollout_setup):
    """GRPO/PPO score a text rollout with each prompt prefilled once for its group: the
    log-probabilities, entropies, hidden states (PPO's value head) and gradients must be those
    of one forward over prompt + completion per sample."""
    import dataclasses

    from omnitune.trainers.objectives.rollout import score_tokens

    config, tokenizer, policy, modality, items = rollout_setup
    config.objective.temperature = 1.0
    rollout = sample(policy, tokenizer, modality, items, config, seed=11)
    assert rollout.group == 4
    whole = dataclasses.replace(rollout, group=1)
    mask = rollout.completion_mask.bool()
    upstream = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for version in (rollout, whole):
        policy.zero_grad()
        scored = score_tokens(policy, version, 0.7, hidden=True)
        (scored.logps * upstream * mask).sum().backward()
        grads = [p.grad.clone() for p in policy.parameters() if p.requires_grad]
        results.append((scored, grads))
    (shared, shared_grads), (plain, plain_grads) = results
    assert (shared.logps[mask] - plain.logps[mask]).abs().max() <= 1e-5
    assert (shared.entropy[mask] - plain.entropy[mask]).abs().max() <= 1e-5
    assert (shared.hidden[mask] - plain.hidden[mask]).abs().max() <= 1e-5
    pairs = zip(shared_grads, plain_grads, strict=True)
    assert max(float((a - b).abs().max()) for a, b in pairs) <= 1e-5


def test_sampling_with_the_adapter_merged_leaves_the_base_weights_bit_for_bit(rollout_setup):
    config, tokenizer, policy, modality, items = rollout_setup
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    sample(policy, tokenizer, modality, items, config, seed=5)
    after = dict(policy.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(getattr(m, "merged", False) for m in policy.modules())
