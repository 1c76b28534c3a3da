"""Generation metrics (lampc.eval.generation) against scalar loops and transformers' generate."""

import pytest
import torch

import lampc
from lampc.eval.generation import GenerationProbe, first_divergence, fp32_greedy
from tiny_models import tiny_gpt2


def scalar_first_divergence(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return len(a)


def test_first_divergence_equals_a_scalar_loop():
    g = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 3, (200, 9), generator=g)
    other = torch.where(torch.rand(200, 9, generator=g) < 0.1, torch.randint(0, 3, (200, 9), generator=g), reference)
    expected = [scalar_first_divergence(a, b) for a, b in zip(reference.tolist(), other.tolist())]
    assert first_divergence(reference, other).tolist() == expected
    assert first_divergence(reference, reference).tolist() == [9] * 200


@pytest.mark.slow
def test_fp32_greedy_equals_transformers_generate_without_eos():
    model = tiny_gpt2(score_gain=3.0)
    prompts = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(1))
    ours = fp32_greedy(model, prompts, 10)
    theirs = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=10, min_new_tokens=10,
                            do_sample=False, eos_token_id=None)[:, 6:]
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_probe_of_the_fp32_model_itself_matches_everything_and_uniform_m1_does_not():
    model = tiny_gpt2(score_gain=3.0)
    prompts = torch.randint(0, 97, (4, 8), generator=torch.Generator().manual_seed(2))
    probe = GenerationProbe.build(model, prompts, new_tokens=12, batch_size=3)
    same = probe.measure(lampc.compile(model, format="m23", criterion="uniform"))
    assert (same["gen_match_tokens"], same["gen_identical"], same["gen_decode_rate"]) == (12.0, 1.0, 0.0)
    coarse = probe.measure(lampc.compile(model, format="m1", criterion="uniform", sites="all"))
    assert coarse["gen_match_tokens"] < 12.0 and coarse["gen_identical"] < 1.0
