"""Editing fx graphs: insert a call with the provenance and fake value the rest of the graph has."""

from __future__ import annotations

import torch
from torch import fx


def insert_call(graph: fx.Graph, target, args: tuple, kwargs: dict | None = None, *, like: fx.Node,
                name: str | None = None, module=None) -> fx.Node:
    """Insert `target(*args, **kwargs)` at the graph's insertion point, with the provenance of `like`
    and a fake value (meta["val"]) computed from the arguments' fake values. With `module`: a call of that
    submodule, `target` being its name in the graph module."""
    kwargs = kwargs or {}
    node = graph.create_node("call_function" if module is None else "call_module", target, tuple(args), kwargs,
                             name=name)
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    node.meta["val"] = _fake_value(target if module is None else module, args, kwargs)
    return node


def _fake_value(target, args, kwargs):
    def value(arg):
        if isinstance(arg, fx.Node):
            return arg.meta.get("val")
        if isinstance(arg, (list, tuple)):
            return type(arg)(value(a) for a in arg)
        return arg

    fake_args, fake_kwargs = value(args), {k: value(v) for k, v in kwargs.items()}
    fake_mode = next((v.fake_mode for v in _tensors(fake_args) if hasattr(v, "fake_mode")), None)
    if fake_mode is None:
        return None
    with fake_mode:
        return target(*fake_args, **fake_kwargs)


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)
