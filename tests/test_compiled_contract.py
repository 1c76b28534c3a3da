"""What a compiled model accepts, refuses and leaves alone: no argument silently dropped, no mode switched behind
the user's back, no stale weight copy, no policy value that means nothing, no random stream shared between models.
"""

import numpy as np
import pytest
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutput

import lampc
from lampc import SitePolicy
from tiny_models import padded_batch, tiny_gpt2

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(score_gain=3.0)


@pytest.fixture(scope="module")
def m23(model):
    return lampc.compile(model, format="m23", criterion="uniform")


class DataDependentLM(nn.Module):
    """A causal-LM-shaped model whose forward branches on data: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(vocab_size=11, n_positions=16)
        self.embed = nn.Embedding(11, 4)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        x = self.embed(input_ids)
        if x.sum() > 0:
            x = -x
        return CausalLMOutput(logits=x)


def test_compile_leaves_the_model_in_its_mode_even_when_capture_fails():
    model = tiny_gpt2()
    model.train()
    lampc.compile(model)
    assert model.training
    broken = DataDependentLM().train()
    with pytest.raises(lampc.CaptureError):
        lampc.compile(broken)
    assert broken.training
    assert not tiny_gpt2().eval().training


def test_compiled_model_modes_do_not_raise(m23):
    assert m23.eval() is m23 and not m23.training
    with pytest.warns(UserWarning, match="inference graph"):
        m23.train()
    assert m23.training
    m23.eval()


def test_labels_give_the_transformers_loss(model, m23):
    ids, mask = padded_batch(97)
    labels = ids.masked_fill(mask == 0, -100)
    want = model(ids, attention_mask=mask, labels=labels).loss
    got = m23(ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(got, want, atol=1e-6)
    assert isinstance(m23(ids, return_dict=False), tuple)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(token_type_ids=torch.zeros(2, 12, dtype=torch.long)), TypeError, "token_type_ids cannot be honoured"),
    (dict(inputs_embeds=torch.zeros(2, 12, 32)), TypeError, "inputs_embeds cannot be honoured"),
    (dict(output_hidden_states=True), ValueError, "output_hidden_states=True"),
    (dict(output_attentions=True), ValueError, "output_attentions=True"),
])
def test_arguments_the_graph_cannot_honour_are_named(m23, kwargs, error, message):
    ids, _ = padded_batch(97)
    with pytest.raises(error, match=message):
        m23(ids, **kwargs)


def test_position_ids_are_honoured(model, m23):
    ids, mask = padded_batch(97)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    want = model(ids, attention_mask=mask, position_ids=positions).logits
    got = m23(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)


def test_int32_ids_and_an_empty_batch(m23, model):
    ids, mask = padded_batch(97)
    assert torch.equal(m23(ids.int(), attention_mask=mask.int()).logits, m23(ids, attention_mask=mask).logits)
    with pytest.raises(ValueError, match="a batch of 0 sequences"):
        m23(torch.zeros(0, 5, dtype=torch.long))


def test_a_meta_device_model_is_refused_at_compile_time():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=16))
    with pytest.raises(lampc.CaptureError, match="meta device"):
        lampc.compile(model)


def test_native_weight_cache_follows_a_data_swap():
    model = tiny_gpt2()
    compiled = lampc.compile(model, format="bf16", backend="native", criterion="uniform", sites="all")
    ids, _ = padded_batch(97)
    compiled(ids)
    with torch.no_grad():
        model.lm_head.weight.data = torch.randn_like(model.lm_head.weight) * 3  # same Parameter, new storage
    fresh = lampc.compile(model, format="bf16", backend="native", criterion="uniform", sites="all")
    assert torch.equal(compiled(ids).logits, fresh(ids).logits)


@pytest.mark.parametrize("kwargs, message", [
    (dict(criterion="uniform", tau=0.1), "tau does not apply to criterion 'uniform'"),
    (dict(criterion="budget", budget=2, tau=0.1), "tau does not apply to criterion 'budget'"),
    (dict(criterion="target", tau=1.5, length_scaling=True), "length_scaling .* means nothing for criterion 'target'"),
    (dict(seed=2**64), "seed must be < 2\\*\\*63"),
])
def test_values_that_mean_nothing_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SitePolicy(**kwargs)


@pytest.mark.parametrize("policy", [{}, 0, "strict"])
def test_a_policy_that_is_not_a_policy_is_refused(model, policy):
    with pytest.raises(ValueError, match="policy must be a lampc.Policy"):
        lampc.compile(model, policy)


def test_numpy_and_torch_scalars_are_accepted():
    site = SitePolicy(tau=np.float64(0.25), block_k=np.int64(4), seed=torch.tensor(3), l_ref=np.int32(64))
    assert (site.tau, site.block_k, site.seed, site.l_ref) == (0.25, 4, 3, 64)
    assert type(site.block_k) is int and SitePolicy.from_spec(site.to_spec()) == site
    assert SitePolicy(criterion="budget", budget=np.float32(0.5)).budget == 0.5
    assert SitePolicy(seed=2**63 - 1).seed == 2**63 - 1


def test_a_64_bit_seed_runs(model):
    compiled = lampc.compile(model, format="m4", criterion="random", tau=0.1, seed=2**63 - 1)
    ids, mask = padded_batch(97)
    assert torch.isfinite(compiled(ids, attention_mask=mask).logits).all()


def test_stats_say_when_recording_is_off(model):
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    compiled.record_stats(False)
    compiled(padded_batch(97)[0])
    stats = compiled.stats()
    assert stats["recording"] is False and "recording is off" in stats["note"]
    compiled.record_stats(True)
    assert compiled.stats()["recording"] is True and "note" not in compiled.stats()


def test_random_baseline_streams_are_per_model(model):
    ids, mask = padded_batch(97)

    def selections(compiled):
        compiled.keep_selections()
        compiled(ids, attention_mask=mask)
        return compiled.selections()

    policy = dict(format="m4", criterion="random", tau=0.05, seed=5)
    first, second = lampc.compile(model, **policy), lampc.compile(model, **policy)
    a = selections(first)
    b = selections(second)  # a second model with the same seed starts the same stream
    assert all(torch.equal(a[site], b[site]) for site in a)
    again = selections(first)  # the first model's stream advanced: other draws, same counts
    assert any(not torch.equal(a[site], again[site]) for site in a)
    assert all(torch.equal(a[site].sum(-1), again[site].sum(-1)) for site in a)
    first.reset_random()
    assert all(torch.equal(a[site], selections(first)[site]) for site in a)
