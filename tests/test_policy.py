"""Policy validation: every field checked, errors name the field."""

import pytest

from lampc import Policy, SitePolicy
from lampc.formats import parse


@pytest.mark.parametrize("kwargs,field", [
    (dict(format="m24"), "format"), (dict(format="fp12"), "format"), (dict(block_k=0), "block_k"),
    (dict(block_k=2.5), "block_k"), (dict(backend="gpu"), "backend"), (dict(criterion="best"), "criterion"),
    (dict(criterion="target", tau=2.5), "tau"), (dict(criterion="target", tau=0.9), "tau"),
    (dict(criterion="strict", tau=0.0), "tau"), (dict(criterion="relaxed", tau=1.5), "tau"),
    (dict(criterion="strict", tau=float("nan")), "tau"), (dict(criterion="budget"), "budget"),
    (dict(criterion="budget", budget=-1), "budget"), (dict(criterion="budget", budget=1.5), "budget"),
    (dict(criterion="strict", budget=3), "budget"), (dict(l_ref=0), "l_ref"), (dict(dense_above=2.0), "dense_above"),
    (dict(format="m4", backend="native"), "backend"), (dict(criterion="random", count_from="uniform"), "count_from"),
    (dict(length_scaling="yes"), "length_scaling"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SitePolicy(**kwargs)


def test_defaults_and_spec_round_trip():
    site = SitePolicy(format="m7", criterion="budget", budget=0.05, block_k=32)
    assert site.format == parse("m7") and site.m_bits == 7
    assert SitePolicy.from_spec(site.to_spec()) == site
    scaled = SitePolicy(format="m7", criterion="relaxed", tau=0.2, block_k=32, length_scaling=True, l_ref=64)
    assert SitePolicy.from_spec(scaled.to_spec()) == scaled
    with pytest.raises(ValueError, match="length_scaling .* means nothing for criterion 'budget'"):
        SitePolicy(criterion="budget", budget=0.05, length_scaling=True)  # its count is per row already
    assert SitePolicy(criterion="relaxed").tau == 0.03
    assert SitePolicy(criterion="random", tau=0.5).count_from == "strict"


def test_overrides_reach_every_enabled_kind_and_reject_unknown_names():
    policy = Policy.from_overrides(None, format="m7", criterion="relaxed")
    assert policy.attention.format.name == "m7" and policy.attention.tau == 0.03
    assert policy.layer_norm is None
    with pytest.raises(ValueError, match="unknown policy field"):
        Policy.from_overrides(None, m=4)
    with pytest.raises(ValueError, match="sites"):
        Policy(sites="everything")


@pytest.mark.parametrize("rule", [dict(error_scale="mixed"), dict(length_scaling=True, l_ref=64),
                                  dict(criterion="budget", budget=4)])
def test_unguarded_producers_take_the_numbers_without_the_rule(rule):
    """sites='all': the matmuls that are no site run the first kind's format with no look-ahead, whatever rule
    settings that kind has (an error scale or length scaling once made the uniform policy invalid)."""
    policy = Policy(attention=SitePolicy(format="m5", block_k=4, **rule), sites="all")
    unguarded = policy.unguarded()
    assert unguarded.criterion == "uniform" and unguarded.tau is None and unguarded.budget is None
    assert unguarded.error_scale == "score" and unguarded.length_scaling is False
    assert (unguarded.format.name, unguarded.block_k) == ("m5", 4)
