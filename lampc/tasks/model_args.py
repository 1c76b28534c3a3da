"""lm-eval's `model_args` for the model "lampc", read and checked before any model is loaded.

lm-eval hands `LampcLM` its `--model_args` as keywords whose values it has already guessed (true/false -> bool,
digits -> int, a number -> float, None, anything else a string; quotes keep a string); Python callers pass what they
like. `read_model_args` turns them into what the adapter and the policy take, or raises ValueError naming the field
and what it takes:

    fp32, kl                          true/false, 1/0 or yes/no, in any case
    batch_size                        an integer >= 1, or auto (lampc's default, DEFAULT_BATCH_SIZE)
    max_length                        an integer >= 1 (capped at the model's position table)
    device                            a torch device that exists here
    kinds                             site kinds joined by "+" (attention+logits), or all
    policy                            a policy file (JSON/YAML, as `lampc eval --policy`) or a lampc.Policy
    the SitePolicy fields             a text read by lampc's one codec (lampc/config/codec.py), typed from the
                                      field's annotation: a flag (fused, length_scaling) as fp32 and kl are, a
                                      number from its digits, the budget a count k per row or a fraction, "none"
                                      for an optional field; then checked by SitePolicy and Policy themselves, as
                                      lampc.compile checks them

`fp32=True` (the uncompiled reference) takes no policy: a policy field beside it is refused, not dropped.
lm-eval's own `--device` (default cuda:0) arrives as `lm_eval_device`: on a machine without that device it is
lm-eval's default, not the user's choice, so the model runs on the CPU with one warning; a `device` in model_args
that is not there is refused.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config.codec import field_kinds, parse_field
from ..policy import SET_BY_PASSES, SITE_FIELDS, Policy, SitePolicy

DEFAULT_BATCH_SIZE = 8
USER_FIELDS = tuple(f for f in SITE_FIELDS if f not in SET_BY_PASSES)
"""The SitePolicy fields model_args takes (softcap and biased are set by lampc's passes, not by users)."""
POLICY_ARGS = ("kinds", "policy", "sites")
OWN_ARGS = ("model", "fp32", "batch_size", "max_length", "kl", *POLICY_ARGS, "device")
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class ModelArgs:
    """model_args as LampcLM uses them. base and overrides: lampc.compile(model, base, **overrides)."""

    model: str = "embedded"
    fp32: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int | None = None
    kl: bool = True
    device: torch.device = torch.device("cpu")
    base: Policy | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def read_model_args(model: str = "embedded", *, fp32=False, batch_size=DEFAULT_BATCH_SIZE, max_length=None, kl=True,
                    kinds=None, policy=None, sites=None, device=None, lm_eval_device=None, **fields) -> ModelArgs:
    """Check every model_args field (ValueError naming it) and type it; builds the policy once to check it."""
    unknown = sorted(set(fields) - set(USER_FIELDS))
    if unknown:
        raise ValueError(f"model_args: unknown field(s) {unknown}; lampc takes {', '.join(OWN_ARGS)} and the "
                         f"SitePolicy fields {', '.join(sorted(USER_FIELDS))}")
    fp32 = as_bool("fp32", fp32)
    given = {"kinds": kinds, "policy": policy, "sites": sites, **fields}
    if fp32 and any(v is not None for v in given.values()):
        names = ", ".join(sorted(k for k, v in given.items() if v is not None))
        raise ValueError(f"model_args fp32=True runs the uncompiled FP32 model, which has no policy: leave out "
                         f"{names}")
    args = ModelArgs(model=str(model), fp32=fp32, batch_size=_batch_size(batch_size), kl=as_bool("kl", kl),
                     max_length=None if max_length is None else _count("max_length", max_length),
                     device=_device(device, lm_eval_device))
    if fp32:
        return args
    base = _policy_file(policy)
    overrides = {name: _site_value(name, value) for name, value in fields.items()}
    if kinds is not None:
        overrides["kinds"] = "all" if kinds == "all" else str(kinds).split("+")
    if sites is not None:
        overrides["sites"] = sites
    try:
        Policy.from_overrides(base, **overrides)  # every field checked as lampc.compile will check it
    except ValueError as err:
        raise ValueError(f"model_args: {err}") from None
    return dataclasses.replace(args, base=base, overrides=overrides)


def as_bool(name: str, value) -> bool:
    """A model_args flag: a bool, 0/1, or one of true/false, 1/0, yes/no in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise ValueError(f"model_args {name}: expected true/false, 1/0 or yes/no (any case), got {value!r}")


def _count(name: str, value, *, what: str = "an integer >= 1") -> int:
    number = value
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"model_args {name}: expected {what}, got {value!r}")
    return number


def _batch_size(value) -> int:
    """lm-eval's batch_size: a count, or "auto"/"auto:N" (lm-eval's search for the largest batch that fits, which
    lampc does not run: it takes its default)."""
    if isinstance(value, str) and (value == "auto" or (value.startswith("auto:") and value[5:].isdigit())):
        return DEFAULT_BATCH_SIZE
    return _count("batch_size", value, what="an integer >= 1 or auto")


def _site_value(name: str, value):
    """SitePolicy field `name` from model_args: a text read by the codec as the field's annotation says (a flag by
    `as_bool`: its six words); a Python value as it is. What the codec cannot read is left for SitePolicy, whose
    check names the field and its range ("SitePolicy.tau must be a finite number, got 'abc'"), except a count or
    fraction (the budget), whose check could not show the text."""
    kind, _ = field_kinds(SitePolicy)[name]
    if kind == "bool":
        return as_bool(name, value)
    if not isinstance(value, str):
        return value
    try:
        return parse_field(SitePolicy, name, value)
    except ValueError:
        if kind == "number":
            raise ValueError(f"model_args {name}: expected an int k per row or a fraction in (0, 1], got "
                             f"{value!r}") from None
        return value


def _policy_file(policy) -> Policy | None:
    """model_args policy: a file (as lampc eval --policy reads it), a Policy, or None."""
    if policy is None or isinstance(policy, Policy):
        return policy
    if not isinstance(policy, (str, Path)):
        raise ValueError(f"model_args policy: expected a policy file or a lampc.Policy, got {type(policy).__name__}")
    from ..cli_policy import load_policy_file
    from ..cli_support import CliError

    try:
        return load_policy_file(policy)
    except CliError as err:
        raise ValueError(f"model_args policy: {str(err).removeprefix('--policy: ')}") from None


def _device(device, lm_eval_device) -> torch.device:
    """model_args device (must exist here), else lm-eval's --device (the CPU, with one warning, where it does not),
    else the CPU."""
    if device is not None:
        found, why = _torch_device("model_args device", device)
        if why:
            raise ValueError(f"model_args device: {device!r} is not available here: {why}")
        return found
    if lm_eval_device is not None:
        found, why = _torch_device("lm-eval's --device", lm_eval_device)
        if not why:
            return found
        warnings.warn(f"lampc: lm-eval's device {lm_eval_device!r} is not available here: {why}; running on the CPU "
                      f"(lm-eval's --device defaults to cuda:0; pass --device cpu to choose the CPU)", stacklevel=4)
    return torch.device("cpu")


def _torch_device(name: str, value) -> tuple[torch.device, str]:
    """(the device, "" if it exists here, else why not); ValueError for text that names no device."""
    try:
        found = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}: expected a torch device such as cpu, cuda, cuda:0 or mps, got {value!r}") from None
    if found.type == "cuda":
        if not torch.cuda.is_available():
            return found, "this torch has no CUDA (torch.cuda.is_available() is False)"
        if found.index is not None and found.index >= torch.cuda.device_count():
            return found, f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif found.type == "mps" and not torch.backends.mps.is_available():
        return found, "this torch has no MPS (torch.backends.mps.is_available() is False)"
    elif found.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=found)
        except Exception as err:  # noqa: BLE001 - any backend's refusal means "not here"
            return found, str(err).splitlines()[0]
    return found, ""
