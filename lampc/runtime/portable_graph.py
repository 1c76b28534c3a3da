"""A graph module in a form pickle can save: `PortableGraph(gm)` pickles, and loads back as a GraphModule that
computes what gm computes, with gm's node names, arguments, signature and output structure.

torch.fx saves a GraphModule as its generated code and re-traces it on load, which renames the nodes (the site
descriptions point at them by name) and needs a tracer that torch.export's graphs do not carry. So a graph is saved
as a record of its nodes (name, op, target, arguments, the metadata that pickles) and its attributes (weights, taps,
hooks), and rebuilt with fx's public Graph API. What torch.export attaches is saved in a picklable form:

    torch.export's attachment                 saved as
    input guards (exec'd source, `_guards_fn`) the same guard function, from its marshalled bytecode
    pre/post hooks (local lambdas)            the same calls, as a small picklable object
    train()/eval() that raise                 left out (the loaded graph is a plain GraphModule)
    node metadata                             module paths, site tags, stack traces; not FakeTensor values (shapes)

Marshalled bytecode is specific to the Python version: `saved_with` / `check_saved_with` record and check the
versions a saved graph needs.
"""

from __future__ import annotations

import marshal
import math
import pickle
import platform
import types
import warnings

import torch
from torch import fx, nn

FORMAT_VERSION = 2  # of lampc's saved form; raise it when what is saved changes (2: typed op arguments and tags)
_VALUE_META = ("val", "example_value", "tensor_meta", "unbacked_bindings")  # FakeTensors and symbolic shapes
_HOOKS = ("_forward_pre_hooks", "_forward_hooks")
_REGENERATED = ("_graph", "_code", "_lineno_map", "_prologue_start", "_tracer_cls", "_tracer_extras",
                "train", "eval")  # rebuilt by recompile(), or torch.export's train()/eval() refusals (bound to gm)


def saved_with() -> dict:
    """The versions a saved graph must be loaded with."""
    return {"format": FORMAT_VERSION, "python": ".".join(platform.python_version_tuple()[:2]),
            "torch": torch.__version__}


def check_saved_with(saved: dict) -> dict:
    """`saved` when it is what this Python and torch load; else a named error, before anything else is loaded."""
    here = saved_with()
    if saved != here:
        raise RuntimeError(f"this compiled model was saved in lampc's format {saved.get('format')} with Python "
                           f"{saved.get('python')} and torch {saved.get('torch')}; load it with those (here: format "
                           f"{here['format']}, Python {here['python']}, torch {here['torch']}), or compile the model "
                           "again")
    return saved


class VersionStamp:
    """Pickled first, checked first: unpickling it runs `check_saved_with` before the graphs after it load."""

    def __reduce__(self):
        return check_saved_with, (saved_with(),)


class PortableGraph:
    """A graph module as pickle should save it: `pickle.loads(pickle.dumps(PortableGraph(gm)))` is a GraphModule
    computing what gm computes, with gm's node names (see module docstring). Only pickled, never run."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm

    def __reduce__(self):
        gm = self.gm
        body = {k: v for k, v in gm.__dict__.items() if k not in _REGENERATED}
        body["_modules"] = {name: _portable_module(m) for name, m in gm._modules.items()}
        for name in _HOOKS:
            kind = "forward pre-hook" if name == "_forward_pre_hooks" else "forward hook"
            body[name] = type(body[name])((key, _portable_hook(h, kind)) for key, h in body[name].items())
        for name in ("_in_spec", "_out_spec"):
            if name in body:
                body[name] = Quiet(body[name])
        return load_graph, (VersionStamp(), body, graph_record(gm.graph))


def load_graph(versions: dict, body: dict, record: dict) -> fx.GraphModule:
    """The GraphModule that `PortableGraph` saved (`versions` was checked as it was unpickled: VersionStamp)."""
    root = nn.Module()
    root.__dict__.update(body)  # the attributes the graph's get_attr and call_module nodes name
    gm = fx.GraphModule(root, build_graph(record))
    gm.__dict__.update(body)
    gm.recompile()
    return gm


def graph_record(graph: fx.Graph) -> dict:
    """The nodes of a graph in order, each (name, op, target, args, kwargs, metadata), and its code generator (which
    gives the forward its signature and output structure)."""
    nodes = [(node.name, node.op, _target_record(node.target), _args_record(node.args), _args_record(node.kwargs),
              _meta_record(node.meta)) for node in graph.nodes]
    return {"nodes": nodes, "codegen": Quiet(graph._codegen)}


def build_graph(record: dict) -> fx.Graph:
    graph = fx.Graph()
    graph.set_codegen(record["codegen"])
    by_name: dict[str, fx.Node] = {}
    for name, op, target, args, kwargs, meta in record["nodes"]:
        node = graph.create_node(op, _target(target), _args(args, by_name), _args(kwargs, by_name), name=name)
        if node.name != name:
            raise RuntimeError(f"lampc: a saved graph's node {name!r} came back as {node.name!r}")
        node.meta.update(meta)
        by_name[name] = node
    return graph


class Quiet:
    """An object pickled on its own and loaded without the FutureWarning torch's pytree specs give on unpickling
    (`LeafSpec` is deprecated): the forward's input and output structure, without noise on every load."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return _loads_quietly, (pickle.dumps(self.value),)


def _loads_quietly(data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pickle.loads(data)


class _NodeName(str):
    """A reference to an earlier node, in a saved node's arguments."""


class _Operator(tuple):
    """A torch.ops target, by name: (namespace, op, overload)."""


def _target_record(target):
    if isinstance(target, torch._ops.OpOverload):
        return _Operator((target.namespace, target._opname, target._overloadname))
    return target  # a string (placeholder, get_attr, call_module, output) or an importable function


def _target(record):
    if isinstance(record, _Operator):
        namespace, name, overload = record
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    return record


def _args_record(value):
    """A node's arguments with every node replaced by its name."""
    if isinstance(value, fx.Node):
        return _NodeName(value.name)
    if isinstance(value, dict):
        return {k: _args_record(v) for k, v in value.items()}  # fx's immutable_dict -> dict (create_node wraps it)
    if isinstance(value, slice):
        return slice(_args_record(value.start), _args_record(value.stop), _args_record(value.step))
    if isinstance(value, (tuple, list)):
        return _same_sequence(value, [_args_record(v) for v in value])
    return value


def _args(record, by_name: dict):
    """`_args_record` undone: names back to the rebuilt nodes."""
    if isinstance(record, _NodeName):
        return by_name[str(record)]
    if isinstance(record, dict):
        return {k: _args(v, by_name) for k, v in record.items()}
    if isinstance(record, slice):
        return slice(_args(record.start, by_name), _args(record.stop, by_name), _args(record.step, by_name))
    if isinstance(record, (tuple, list)):
        return _same_sequence(record, [_args(v, by_name) for v in record])
    return record


def _same_sequence(original, items: list):
    """items in original's kind of sequence: a list (fx's immutable_list too), a tuple, torch.Size, a named tuple."""
    if isinstance(original, list):
        return items
    if hasattr(original, "_make"):
        return original._make(items)
    return tuple(items) if type(original) is tuple else type(original)(items)


def _meta_record(meta: dict) -> dict:
    """The metadata entries that pickle (module paths, site tags, stack traces); FakeTensor values are left out."""
    kept = {}
    for key, value in meta.items():
        if key in _VALUE_META:
            continue
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - anything that does not pickle is left out (see module docstring)
            continue
        kept[key] = value
    return kept


def _portable_module(module: nn.Module):
    if type(module).__name__ == "GuardsFn" and "forward" in module.__dict__:
        return SavedGuards(module.forward)
    if isinstance(module, fx.GraphModule):
        return PortableGraph(module)
    return module


_EXPORT_HOOK_CALLS = ("_enter_enable_graph_inputs_of_type_nn_module", "_exit_enable_graph_inputs_of_type_nn_module")


def _portable_hook(hook, kind: str):
    """torch.export's `lambda *a, **k: _enter/_exit_enable_graph_inputs_of_type_nn_module(module_types)`, as an
    object; a lambda or local function of anyone else's (pickle cannot save it) a named error; any other hook as it
    is (a module-level function pickles by reference)."""
    code = getattr(hook, "__code__", None)
    if code is None:
        return hook
    closure = hook.__closure__ or ()
    if hook.__name__ == "<lambda>" and len(code.co_names) == 1 and code.co_names[0] in _EXPORT_HOOK_CALLS \
            and len(closure) == 1:
        return ModuleInputTypesHook(code.co_names[0], closure[0].cell_contents)
    qualname = getattr(hook, "__qualname__", hook.__name__)
    if hook.__name__ == "<lambda>" or "<locals>" in qualname:
        raise TypeError(f"lampc cannot save this graph: its {kind} {getattr(hook, '__module__', '?')}.{qualname} "
                        "is a lambda or local function, which does not pickle; remove it (handle.remove()) before "
                        "saving, or register a module-level function")
    return hook


class ModuleInputTypesHook:
    """A picklable call of torch.export's `_enter_/_exit_enable_graph_inputs_of_type_nn_module(module_types)`."""

    def __init__(self, function: str, module_types):
        self.function = function
        self.module_types = module_types

    def __call__(self, *args, **kwargs):
        from torch._export import non_strict_utils

        getattr(non_strict_utils, self.function)(self.module_types)


class SavedGuards(nn.Module):
    """torch.export's input guards (`torch._assert(args[i].size()[d] == n, "Guard failed: ...")`), rebuilt from
    their bytecode: torch.export writes them as source, runs it with exec and keeps only the function."""

    def __init__(self, forward):
        super().__init__()
        self.code = marshal.dumps(_guard_function(forward).__code__)
        self._is_impure = True  # a call without users: dead-code elimination must keep it
        self._function = None

    def forward(self, *args):
        if self._function is None:
            self._function = types.FunctionType(marshal.loads(self.code), _guard_namespace())
        return self._function(*args)

    def __getstate__(self):
        return {**self.__dict__, "_function": None}


def _guard_function(forward):
    """The guard function itself, inside torch._dynamo's `dont_skip_tracing` wrapper (a closure over it)."""
    inner = [c.cell_contents for c in getattr(forward, "__closure__", None) or ()
             if isinstance(c.cell_contents, types.FunctionType)]
    if not isinstance(forward, types.FunctionType) or len(inner) > 1:
        raise TypeError("lampc cannot save the input guards torch.export attached in this torch version")
    return _guard_function(inner[0]) if inner else forward


def _guard_namespace() -> dict:
    """The globals torch.export runs its guard code in (torch/export/_unlift.py)."""
    from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

    return {**SYMPY_INTERP, "math": math, "inf": float("inf"), "torch": torch}
