"""A site's configuration as typed parts, each validating itself, and the one text form they all share.

    codec.py        encode / decode / parse_field: the text of a record, derived from its dataclass fields
    producer.py     Producer types (Emulated, Native): the site's numerics
    rule.py         Rule: the look-ahead's criterion and its settings
    execution.py    Execution: fused or not, when the recompute goes dense
    facts.py        SiteFacts: what the matcher found (soft cap, additive bias)
    site_config.py  SiteConfig: the four together, as a node's tag carries them

Users write `SitePolicy(...)` (lampc/policy.py), whose flat fields build these parts. Loads no torch.
"""

from .codec import Record, decode, encode, parse_field
from .execution import Execution
from .facts import SiteFacts
from .producer import BACKENDS, NATIVE_FORMATS, PRODUCER_TYPES, Emulated, Native, Producer, decode_producer, make_producer
from .rule import ERROR_SCALES, Rule
from .site_config import SiteConfig, SiteTexts

__all__ = ["BACKENDS", "ERROR_SCALES", "Emulated", "Execution", "NATIVE_FORMATS", "Native", "PRODUCER_TYPES",
           "Producer", "Record", "Rule", "SiteConfig", "SiteFacts", "SiteTexts", "decode", "decode_producer", "encode",
           "make_producer", "parse_field"]
