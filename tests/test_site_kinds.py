"""The site-kind table (lampc/site_kinds.py) against what it describes: Policy's fields, and the sites, taps and
statistics of a compiled model with every kind enabled."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lampc
from lampc.policy import Policy, SitePolicy
from lampc.site_kinds import KINDS, LINEAR_KINDS, SITE_KINDS
from tests.tiny_models import tiny_gpt2


def test_policy_has_one_field_per_kind_in_the_tables_order():
    fields = [f.name for f in dataclasses.fields(Policy)]
    assert fields[:len(SITE_KINDS)] == list(SITE_KINDS)
    assert set(fields[len(SITE_KINDS):]) == {"sites", "per_site"}
    assert Policy.from_overrides(None, kinds="all").enabled_kinds() == list(SITE_KINDS)


def test_the_linear_kinds_are_those_whose_consumer_is_no_softmax():
    """The paper's linear sites: a linear producer before layer_norm or an activation."""
    assert LINEAR_KINDS == ("layer_norm", "gelu")
    with pytest.raises(ValueError, match="applies to softmax sites only"):
        Policy(attention=None, **{LINEAR_KINDS[0]: SitePolicy(criterion="target")})


@pytest.mark.slow
def test_the_table_describes_the_sites_of_a_compiled_model():
    n_layer = 2
    compiled = lampc.compile(tiny_gpt2(n_layer=n_layer), kinds="all", steps="none")
    compiled(torch.randint(0, 97, (1, 8)))
    stats = {s["site"]: s for s in compiled.stats()["sites"]}
    assert {s.kind for s in compiled.sites} == set(SITE_KINDS)
    for site in compiled.sites:
        kind = KINDS[site.kind]
        assert compiled.taps[site.index].per_head is kind.per_head, site
        assert (len(stats[site.index]["per_head"]) > 1) is kind.per_head, site
        assert ("softmax" in site.consumer) is kind.softmax, site
        assert (site.producer == "linear") is (kind.producer == "linear"), site
    for name in (name for name, kind in KINDS.items() if kind.per_layer):  # its site mean is the layer mean
        modules = [s.module for s in compiled.sites if s.kind == name]
        assert len(modules) == len(set(modules)) == n_layer, name
