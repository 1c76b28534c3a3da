"""The typed parts of a site's configuration, read back from the op arguments that carry them as text.

An op receives only the parts it reads (lampc/config/site_config.py), each as its codec text; these read them once
per distinct text (a cache: every call of a site passes the same strings).
"""

from __future__ import annotations

import functools

from ..config import Execution, SiteConfig, decode_producer
from ..policy import SitePolicy
from ..producers import ProducerImpl, implementation


@functools.lru_cache(maxsize=1024)
def producer_impl(producer: str) -> ProducerImpl:
    """The registered implementation of the producer written as `producer`."""
    return implementation(decode_producer(producer))


@functools.lru_cache(maxsize=1024)
def execution(text: str) -> Execution:
    return Execution.from_text(text)


@functools.lru_cache(maxsize=4096)
def site_settings(producer: str, rule: str, facts: str | None = None, execution: str | None = None) -> SitePolicy:
    """The SitePolicy the look-ahead reads, from the parts an op was given (those it was not given at defaults)."""
    return SitePolicy.from_config(SiteConfig.from_texts(producer, rule, facts, execution))
