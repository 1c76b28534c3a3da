"""CompiledModel: the rewritten graph behind the Hugging Face forward signature, with its statistics."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, fx, nn

from ..capture import takes_use_cache
from ..graph_view import to_networkx, write_graph
from ..passes.result import PassResult
from ..ops import SelectionTap, graph_taps, share_streams
from ..ops.random import RandomStreams
from ..policy import Policy
from .inputs import check_attention_mask as _check_attention_mask, check_input_ids as _check_input_ids
from .report import build_report
from .saving import init_arguments, restore_step_graphs, saved_form
from .stats import collect_stats, merge_taps
from .steps import KVCache, StepGraphs, StepOutput
from .weight_casts import WeightCasts


class CompiledModel(nn.Module):
    """A causal LM whose sites run in low precision under the LAMP look-ahead.

    Call it like the Hugging Face model: `compiled(input_ids, attention_mask=None)` returns an output with
    `.logits` (f32[B, T, vocab]). With `use_cache=True` (or a `past_key_values` from an earlier call) it runs the
    cached-step graphs instead and returns `.past_key_values` too (a `KVCache`); `generate(...)` decodes with them.
    `step_graphs` holds them (None when compiled with steps="none"), built at compile unless steps="lazy".
    `sites`, `skips`, `stats()`, `reset_stats()` and `report()` tell what was rewritten and how much was
    recomputed, over all calls since the last reset.

    The graph computes in FP32 between its sites: `.to(device)` / `.cpu()` move it, a dtype change (`.half()`,
    `.to(torch.bfloat16)`) is refused. `torch.save(compiled)` / `torch.load(path, weights_only=False)` and pickle
    save and load it without recompiling (what is saved: lampc/runtime/saving.py).
    """

    def __init__(self, graph_module: fx.GraphModule, result: PassResult, policy: Policy, *, model_type: str,
                 max_len: int, vocab_size: int, steps=None, step_layout=None, generation_config=None):
        """steps: the StepCapture to build the cached-step graphs from (lampc.compile builds them all right after,
        `step_graphs.build_all()`); step_layout: their cache layout, for step graphs restored without a source
        (a saved model); neither: no step graphs."""
        super().__init__()
        self.graph_module = graph_module
        self.sites = list(result.sites)
        self.skips = list(result.skips)
        self.policy = policy
        self.model_type = model_type
        self.max_len = max_len
        self.vocab_size = vocab_size
        self._weights = WeightCasts(graph_module)  # native sites: one cast per weight, its step graphs' too
        self.step_graphs = None if steps is None and step_layout is None else StepGraphs(
            steps, policy, self._weights, sites=self.sites, skips=self.skips, layout=step_layout)
        self.generation_config = generation_config
        self.training = False  # an inference graph (see train())
        self._takes_use_cache = takes_use_cache(graph_module.forward)
        self._random_streams = RandomStreams()  # the random baseline's generators: this model's own, per thread
        share_streams(graph_module, self._random_streams)  # its draws modules, in every graph (lampc/ops/random.py)
        if self.step_graphs is not None:
            self.step_graphs.random_streams = self._random_streams

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                past_key_values: KVCache | None = None, position_ids: Tensor | None = None,
                use_cache: bool | None = None, cache: KVCache | None = None, **unused):
        """Logits of the whole sequence; the cached-step graphs when a cache is asked for or given, when the
        sequence is one token, or when position_ids are given (the full-sequence graph numbers positions 0..T-1).

        Of the Hugging Face forward's other arguments: `labels` gives `.loss` (next-token cross-entropy, -100
        ignored, as transformers computes it); `return_dict=False` a tuple; `output_attentions` /
        `output_hidden_states` may only be False; anything else given (token_type_ids, inputs_embeds, ...) is
        refused by name: the captured graph cannot honour it."""
        labels, return_dict = _check_extra_arguments(unused)
        out = self._forward(input_ids, attention_mask, past_key_values=past_key_values, position_ids=position_ids,
                            use_cache=use_cache, cache=cache)
        if labels is not None:
            out["loss"] = causal_lm_loss(out["logits"], labels)
        return out.to_tuple() if return_dict is False else out

    def _forward(self, input_ids, attention_mask, *, past_key_values, position_ids, use_cache, cache):
        if cache is not None:  # transformers 5's name for past_key_values
            if past_key_values is not None:
                raise ValueError("give the cache as past_key_values or as cache, not both")
            past_key_values = cache
        past = 0 if past_key_values is None else _check_cache(past_key_values, input_ids, self._steps().layout)
        cached = bool(use_cache) or past_key_values is not None or position_ids is not None \
            or (isinstance(input_ids, Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 1)
        _check_input_ids(input_ids, self.vocab_size, self.max_len, past=past, min_len=1 if cached else 2)
        input_ids = input_ids.long()  # int32 ids are accepted; the graph takes int64
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long,
                                        device=input_ids.device)
        _check_attention_mask(attention_mask, input_ids, past)
        attention_mask = attention_mask.long()
        if not cached:
            extra = {"use_cache": False} if self._takes_use_cache else {}
            return self.graph_module(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)[:, past:]
        else:
            position_ids = _check_position_ids(position_ids, input_ids, self.max_len)
        logits, grown = self._steps().run(input_ids, attention_mask, position_ids, past_key_values)
        return StepOutput(logits, grown if use_cache is not False else None)

    def train(self, mode: bool = True) -> "CompiledModel":
        """A compiled model is an inference graph: dropout was captured off and no mode changes its ops. train()
        and eval() set `training` on this wrapper only (so code that toggles modes keeps working), and warn
        when asked for training mode."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode): mode must be True or False, got {mode!r}")
        if mode:
            warnings.warn("lampc: a compiled model runs its inference graph (dropout off, no gradients through "
                          "the look-ahead); train() changes nothing in what it computes", stacklevel=2)
        self.training = mode
        return self

    def _apply(self, fn, recurse: bool = True):
        """Every conversion (.to, .cpu, .cuda, .half, ...) passes here: device moves go on; a dtype change is refused
        before any tensor is converted (the graph's weights are the user's model's own)."""
        parameter = next(self.graph_module.parameters(), None)
        probe = fn(torch.zeros(0, device=parameter.device if parameter is not None else "cpu"))
        if isinstance(probe, Tensor) and probe.dtype != torch.float32:
            raise TypeError(
                f"a compiled model keeps its FP32 graph and cannot be converted to {probe.dtype} (.half(), "
                ".bfloat16(), .double(), .to(dtype)): its low precision is the policy's format at each site. For "
                "real bf16/fp16 matmuls compile with format=\"bf16\", backend=\"native\" (sites=\"all\" lowers "
                "every matmul); device moves (.to(device), .cpu()) work")
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        """What torch.save and pickle keep (lampc/runtime/saving.py)."""
        return saved_form(self)

    def __setstate__(self, state: dict) -> None:
        args, kwargs = init_arguments(state)
        self.__init__(*args, **kwargs)
        restore_step_graphs(self, state)

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options) -> Tensor:
        """Decode with the KV cache, as Hugging Face's `generate` does for these arguments (see
        lampc/runtime/generate.py): `max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`,
        `eos_token_id`, `pad_token_id`, `generator`, `streamer`. Returns prompt + new tokens, i64[B, T + n]."""
        from .generate import generate

        return generate(self, input_ids, attention_mask, **options)

    def _steps(self) -> StepGraphs:
        if self.step_graphs is None:
            raise RuntimeError("this compiled model has no cached-step graphs (compiled with steps=\"none\"): "
                               "compile it with lampc.compile(model) to decode with a cache (generate, use_cache)")
        return self.step_graphs

    def _all_taps(self) -> list[SelectionTap]:
        taps = list(self.taps.values())
        if self.step_graphs is not None:
            taps += [tap for by_site in self.step_graphs.taps().values() for tap in by_site.values()]
        return taps

    @property
    def taps(self) -> dict[int, SelectionTap]:
        """The full-sequence graph's taps, by site."""
        return graph_taps(self.graph_module)

    def stats(self, phase: str | None = None) -> dict:
        """Recompute rates per site (= per layer for attention), per head, per kind and overall.

        phase None: the full-sequence graph (every plain forward), plus "prefill" and "decode" entries holding the
        same account for the cached steps once any ran (generate's prompt pass, and its one-token steps).
        phase "forward", "prefill" or "decode": that account alone."""
        if phase not in (None, "forward", "prefill", "decode"):
            raise ValueError(f"phase must be None, 'forward', 'prefill' or 'decode', got {phase!r}")
        if phase in ("prefill", "decode"):
            steps = self.step_graphs
            if steps is None:
                return collect_stats([], {})
            return collect_stats(steps.sites(phase), merge_taps(steps.taps(phase).values()))
        out = collect_stats(self.sites, self.taps)
        out["recording"] = all(tap.enabled for tap in self._all_taps())
        if not out["recording"]:
            out["note"] = "statistics recording is off (record_stats(False)): calls since then are not counted"
        if phase is None and self.step_graphs is not None:
            for name in self.step_graphs.phases_run():
                out[name] = self.stats(name)
        return out

    def reset_random(self) -> None:
        """Restart every site's random baseline from its seed, in every thread (each thread draws from its own
        streams: lampc/ops/random.py says where the draws still follow the thread schedule)."""
        self._random_streams.reset()

    def reset_stats(self) -> None:
        for tap in self._all_taps():
            tap.reset()

    def record_stats(self, enabled: bool = True) -> None:
        """Switch the statistics taps on or off, in every graph (off: no counting cost, e.g. for timing)."""
        if self.step_graphs is not None:
            self.step_graphs.tap_settings["enabled"] = enabled
        for tap in self._all_taps():
            tap.enabled = enabled

    def keep_selections(self, enabled: bool = True) -> None:
        """Keep the last call's selection mask of every site, in every graph (for inspection and tests)."""
        if self.step_graphs is not None:
            self.step_graphs.tap_settings["keep_last"] = enabled
        for tap in self._all_taps():
            tap.keep_last = enabled
            if not enabled:
                tap.last_selection = None

    def selections(self, phase: str = "forward") -> dict[int, Tensor]:
        """The last call's selection per site (needs `keep_selections()`); phase "prefill"/"decode" for the
        cached steps (decode: whichever decode graph ran last)."""
        if phase == "forward":
            taps = self.taps
        else:
            last = self.step_graphs.ran.get(phase) if self.step_graphs else None
            taps = graph_taps(self.step_graphs.graphs[last]) if last else {}
        return {site: tap.last_selection for site, tap in taps.items() if tap.last_selection is not None}

    def report(self) -> dict:
        """A JSON-serialisable account: policy, sites, skips, stats, versions."""
        return build_report(self)

    def to_networkx(self):
        return to_networkx(self.graph_module)

    def write_graph(self, path: str) -> None:
        """GraphML (.graphml) or DOT (.dot) of the rewritten graph."""
        write_graph(self.graph_module, path)


ACCEPTED_EXTRA = ("labels", "return_dict", "output_attentions", "output_hidden_states")


def _check_extra_arguments(extra: dict):
    """(labels, return_dict) from the forward's extra keyword arguments; a named error for what cannot be done."""
    refused = sorted(k for k, v in extra.items() if k not in ACCEPTED_EXTRA and v is not None)
    if refused:
        raise TypeError(f"a lampc-compiled model takes input_ids, attention_mask, position_ids, past_key_values "
                        f"(and labels); {', '.join(refused)} cannot be honoured by the captured graph")
    for name in ("output_attentions", "output_hidden_states"):
        if extra.get(name):
            raise ValueError(f"{name}=True: a compiled model returns logits (and its cache) only")
    return extra.get("labels"), extra.get("return_dict")


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy of logits[:, :-1] against labels[:, 1:], positions labelled -100 ignored."""
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:2]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor shaped like input_ids {tuple(logits.shape[:2])}, got {shape}")
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids as Hugging Face's generate makes them: the count of tokens before each one; 0 at padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def _check_cache(cache, input_ids, layout) -> int:
    """The cache's length; a named error unless it is one this model returned (its layers, heads, head dims, one
    length throughout). A cache the step graphs built for this layout is taken as it is (one check per decode step
    of generate would otherwise walk every layer): only its batch is compared."""
    if not isinstance(cache, KVCache):
        raise TypeError("past_key_values must be the KVCache a compiled model returned (use_cache=True), "
                        f"got {type(cache).__name__}")
    if cache._layout is not layout:
        _check_cache_layers(cache, layout)
    if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and cache.batch != input_ids.shape[0]:
        raise ValueError(f"past_key_values holds {cache.batch} sequences, input_ids {input_ids.shape[0]}")
    return cache.length


def _check_cache_layers(cache: KVCache, layout) -> None:
    """Every layer's keys and values: float32, this model's heads and head dim, one batch and length throughout."""
    keys, values = cache.keys, cache.values
    if not isinstance(keys, (tuple, list)) or not isinstance(values, (tuple, list)):
        raise TypeError("past_key_values: keys and values must be tuples of tensors, one per layer")
    if len(keys) != layout.n_layers or len(values) != layout.n_layers:
        raise ValueError(f"past_key_values holds {len(keys)} layer(s) of keys and {len(values)} of values; this model "
                         f"has {layout.n_layers} layers")
    for layer, (k, v, (heads, dim)) in enumerate(zip(keys, values, layout.heads)):
        for what, t in (("keys", k), ("values", v)):
            if not isinstance(t, Tensor) or t.dtype != torch.float32:
                got = t.dtype if isinstance(t, Tensor) else type(t).__name__
                raise TypeError(f"past_key_values: layer {layer} {what} must be a float32 tensor (the cache a "
                                f"compiled model returns), got {got}")
        if k.dim() != 4 or k.shape[1] != heads or k.shape[3] != dim:
            raise ValueError(f"past_key_values: layer {layer} keys are shaped {tuple(k.shape)}; this model's cache is "
                             f"(batch, {heads}, positions, {dim}) per layer (a cache of another model?)")
        if v.shape != k.shape:
            raise ValueError(f"past_key_values: layer {layer} values are shaped {tuple(v.shape)}, its keys "
                             f"{tuple(k.shape)}")
        if k.shape[:3:2] != keys[0].shape[:3:2]:
            raise ValueError(f"past_key_values: layer {layer} holds {k.shape[0]} sequence(s) of {k.shape[2]} positions, "
                             f"layer 0 holds {keys[0].shape[0]} of {keys[0].shape[2]}")


def _check_position_ids(position_ids, input_ids: Tensor, max_len: int) -> Tensor:
    """position_ids as the graph takes them (int64); a named error for a shape or a position the model lacks."""
    if not isinstance(position_ids, Tensor) or position_ids.dtype not in (torch.int64, torch.int32):
        got = position_ids.dtype if isinstance(position_ids, Tensor) else type(position_ids).__name__
        raise TypeError(f"position_ids must be an integer tensor (int64) shaped like input_ids, got {got}")
    if tuple(position_ids.shape) != tuple(input_ids.shape):
        raise ValueError(f"position_ids must be shaped like input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(position_ids.shape)}")
    if position_ids.numel() and (position_ids.min() < 0 or position_ids.max() >= max_len):
        raise ValueError(f"position_ids must be in [0, {max_len}) (the model's context), got "
                         f"[{position_ids.min()}, {position_ids.max()}]")
    return position_ids.long()
