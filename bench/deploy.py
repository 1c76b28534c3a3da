"""Deployment speed and accuracy: LAMP on native bf16 vs FP32, torch.autocast bf16 and the model cast to bf16.

    python bench/deploy.py                      # speed (3 shapes, prefill and decode) and accuracy; 1 thread
    python bench/deploy.py --phase prefill      # full forwards only, no decode (faster)
    python bench/deploy.py --skip-accuracy --malloc default --shapes 8x1024   # the large shape (see Allocator)
    python bench/deploy.py --quick              # small model and shapes, for a smoke run (--shapes overrides)
    python bench/deploy.py --skip-speed         # accuracy only (embedded model, Persuasion)
    python bench/deploy.py --memory             # peak memory, one fresh process per variant and shape
    python bench/deploy.py --ceiling            # bf16 vs FP32 on this CPU: one GEMM, the model cast to bf16
    python bench/deploy.py --model smollm2-135m --skip-accuracy   # speed on a trained model and real text

Variants: FP32; `torch.autocast("cpu", bfloat16)`; `model.to(torch.bfloat16)`, a deep copy of the model cast once
(every op in bf16, logits widened to FP32: the ceiling of a bf16 deployment, and less accurate than any other
variant); lampc with every matmul a real bf16 GEMM (sites="all", backend="native", fused sites) and no look-ahead
("uniform"); and LAMP bf16: the same plus the strict look-ahead at the attention sites and at the logits
(lm_head -> softmax), each selected entry recomputed in FP32.

Speed (--phase prefill, decode or both, the default), each variant against the others in the same run, the variants
interleaved in every repetition, median over --repeats repetitions:
- prefill: wall time of one full forward of batch x seq tokens (no cache kept, every variant alike).
- decode: time per generated token of greedy decoding with a KV cache, after a prompt of the row's seq length (cut
  to the model's context minus --new-tokens where longer). The prompt pass is untimed; the --new-tokens tokens are
  the prompt pass's argmax and then --new-tokens - 1 timed one-token steps (ms/token = their mean). The Hugging Face
  variants run the model's own cache loop, `model(input_ids=next, cache=cache, use_cache=True)` (transformers 5's
  name for past_key_values); the lampc variants their compiled prefill and decode graphs (`steps="eager"`, called
  with past_key_values=). Each variant decodes its own greedy tokens; "match k/N" is the mean number of new tokens
  equal to FP32's before the first that differs (lampc.eval.generation.first_divergence; N when all agree), a
  cheap accuracy signal.
Each cell: the time, its speed-up over FP32 (x), and for the lampc variants how much slower than autocast; the
"/ cast" columns give each LAMP variant's time over the cast model's (the target: <= 1.2). Random weights fix
the GEMM time but not the look-ahead's work: the recompute rate of each LAMP variant is printed next to its time
(on random weights it is near 0). `--model smollm2-135m` times a trained model on real text instead, where the
look-ahead does its deployed amount of work. The lampc variants run with statistics off; one more call with them
on gives the rate.

Allocator (--malloc): glibc serves every allocation above 32 MB with a fresh mmap, so each score-sized tensor
is page-faulted in at every call (a pass over a 50 MB tensor: ~25 ms instead of ~4 ms here). `heap` (the
default) calls mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max) at start-up, as jemalloc/tcmalloc would do for a
deployment; it applies to every variant alike, and is the setting where autocast is fastest. `default` keeps
glibc's behaviour. At 8 x 1024 the heap cannot reuse fragmented 400 MB blocks and exhausts 24 GiB: use `default`.

Accuracy: KL / flip rate vs FP32 on the embedded model and Persuasion (the cast model included), with the
recompute rate per site kind.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import lampc
from lampc import Policy, SitePolicy
from lampc.cells import CellCompiler
from lampc.capture_step import cache_argument, returned_cache
from lampc.eval.generation import first_divergence
from peak_memory import peak_growth_mb  # bench/peak_memory.py: this script's directory is on sys.path

KINDS = ["attention", "layer_norm", "gelu", "logits"]  # columns of the recompute-rate report
CAST = "model.to(bfloat16)"
DEFAULT_SHAPES = [(1, 256), (8, 256), (1, 1024)]


def keep_freed_memory() -> None:
    """glibc: no mmap for large blocks, no trimming; freed tensors are reused without page faults."""
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(-4, 0) and libc.mallopt(-1, 2 ** 30)):  # M_MMAP_MAX, M_TRIM_THRESHOLD
        raise RuntimeError("mallopt failed: --malloc heap needs glibc")


def bf16(**rule) -> SitePolicy:
    return SitePolicy(format="bf16", backend="native", fused=True, **rule)


def lamp_policies(attention_taus, logits_taus) -> dict[str, Policy]:
    """name -> Policy of every lampc variant."""
    out = {"lampc uniform bf16": Policy(attention=bf16(criterion="uniform"), sites="all")}
    for tau_a, tau_l in zip(attention_taus, logits_taus):
        out[f"LAMP bf16 (attention {tau_a:g}, logits {tau_l:g})"] = Policy(
            attention=bf16(criterion="strict", tau=tau_a), logits=bf16(criterion="strict", tau=tau_l), sites="all")
    return out


@dataclass
class Decoder:
    """Greedy decoding with a KV cache: start(prompt ids) -> (last position's FP32 logits, cache);
    step(token ids i64[B], cache) -> (the next logits, the grown cache)."""

    start: Callable
    step: Callable


def hf_decoder(model, context=contextlib.nullcontext) -> Decoder:
    """The Hugging Face model's own cache loop (each call under `context`, e.g. autocast)."""
    name = cache_argument(model)  # "cache" in transformers 5, past_key_values before

    def start(ids):
        with context():
            out = model(input_ids=ids, use_cache=True)
        return out.logits[:, -1].float(), returned_cache(out)

    def step(token, cache):
        with context():
            out = model(input_ids=token[:, None], use_cache=True, **{name: cache})
        return out.logits[:, -1].float(), returned_cache(out)

    return Decoder(start, step)


def lampc_decoder(compiled) -> Decoder:
    """The compiled model's cached-step graphs: prefill over the prompt, then its one-token decode graphs."""

    def start(ids):
        out = compiled(ids, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    def step(token, cache):
        out = compiled(token[:, None], past_key_values=cache, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    return Decoder(start, step)


def autocast_bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def variants(model, args, *, with_torch_compile=False, steps="none"):
    """(name -> callable(input_ids) -> FP32 logits of a full forward, name -> CompiledModel for the lampc variants,
    name -> Decoder for every variant but torch.compile's). steps: lampc.compile's ("eager" to decode)."""
    cast = copy.deepcopy(model).to(torch.bfloat16).eval()  # cast once; the original stays FP32
    out = {"fp32": lambda ids: model(input_ids=ids, use_cache=False).logits}

    def autocast(ids):
        with autocast_bf16():
            return model(input_ids=ids, use_cache=False).logits.float()

    out["autocast bf16"] = autocast
    out[CAST] = lambda ids: cast(input_ids=ids, use_cache=False).logits.float()
    decoders = {"fp32": hf_decoder(model), "autocast bf16": hf_decoder(model, autocast_bf16), CAST: hf_decoder(cast)}
    compiler = CellCompiler(model, steps=steps)  # = lampc.compile(model, policy, steps=steps), one capture for all
    compiled = {name: compiler(policy) for name, policy in lamp_policies(args.attention_taus, args.logits_taus).items()}
    for name, c in compiled.items():
        out[name] = (lambda c: (lambda ids: c(ids).logits))(c)
        if steps != "none":
            decoders[name] = lampc_decoder(c)
    if with_torch_compile:
        first = compiled[next(n for n in compiled if n.startswith("LAMP"))]
        graph = torch.compile(first.graph_module, dynamic=False)
        out["LAMP (first) + torch.compile"] = lambda ids: graph(
            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    return out, compiled, decoders


def gpt2_124m_shape(quick: bool) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    layers, width = (12, 768) if not quick else (2, 256)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=width // 64, vocab_size=50257, n_positions=1024,
                        attn_implementation="eager")
    return GPT2LMHeadModel(config).eval()


def time_variants(fns, ids, repeats):
    times = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up (first calls compile the look-ahead kernels)
            fn(ids)
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(ids)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def greedy_decode(decoder: Decoder, ids, new_tokens: int):
    """(new tokens i64[B, new_tokens], seconds per timed step): the prompt pass (untimed) gives the first token,
    new_tokens - 1 one-token steps with the cache the rest."""
    logits, cache = decoder.start(ids)
    token = logits.argmax(-1)
    tokens = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, cache = decoder.step(token, cache)
        token = logits.argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1), (time.perf_counter() - start) / (new_tokens - 1)


def time_decoders(decoders, ids, repeats, new_tokens):
    """(name -> median seconds per decode step, name -> its greedy tokens), the variants interleaved."""
    times = {name: [] for name in decoders}
    tokens = {}
    with torch.no_grad():
        for name, decoder in decoders.items():  # warm-up
            tokens[name] = greedy_decode(decoder, ids, new_tokens)[0]
        for _ in range(repeats):
            for name, decoder in decoders.items():
                tokens[name], seconds = greedy_decode(decoder, ids, new_tokens)
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}, tokens


def rates(compiled_model, phase="forward") -> str:
    by_kind = compiled_model.stats(phase)["by_kind"]
    return " / ".join(f"{100 * by_kind[k]['rate']:.2f}%" for k in KINDS if k in by_kind)


def speed_model(args):
    """(model, description, batch x seq -> input ids): random GPT-2-124M on random tokens, or a lampc model on
    Persuasion (trained weights on real text: the look-ahead's work is the deployed one)."""
    if args.model == "gpt2-random":
        model = gpt2_124m_shape(args.quick)
        return model, "GPT-2-124M shape, random weights, random tokens", lambda b, t: torch.randint(
            0, 50257, (b, t), generator=torch.Generator().manual_seed(t))
    from lampc.eval.data import make_sequences, persuasion_text
    from lampc.models import load_model

    model, tokenizer = load_model(args.model)
    text = torch.tensor(tokenizer(persuasion_text())["input_ids"])
    return model, f"{args.model}, trained weights, Persuasion", lambda b, t: make_sequences(text, t, b, seed=7)


def context_length(model, compiled) -> int:
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2 ** 62
    return min([limit] + [c.max_len for c in compiled.values()])


def cells(medians, compiled, unit, scale, rate_of):
    """Table cells of one row: time (speed-up over FP32[, vs autocast]) [rate], then each LAMP variant / cast."""
    base, ref = medians["fp32"], medians["autocast bf16"]
    out = []
    for name, t in medians.items():
        cell = f"{scale * t:.{0 if scale * t >= 100 else 1}f} {unit} ({base / t:.2f}x"
        cell += f", {t / ref - 1:+.0%} vs autocast)" if name not in ("fp32", "autocast bf16", CAST) else ")"
        if name in compiled and name.startswith("LAMP"):
            cell += f" rate {rate_of(compiled[name])}"
        out.append(cell)
    out += [f"{medians[name] / medians[CAST]:.2f}" for name in medians if name.startswith("LAMP")]
    return out


def header(names) -> None:
    columns = list(names) + [f"{name} / cast" for name in names if name.startswith("LAMP")]
    print("| batch x seq | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")


def speed(args):
    model, description, make_ids = speed_model(args)
    decode = args.phase in ("decode", "both")
    fns, compiled, decoders = variants(model, args, with_torch_compile=args.torch_compile,
                                       steps="eager" if decode else "none")
    shapes = args.speed_shapes
    for c in compiled.values():
        c.record_stats(False)
    if args.phase in ("prefill", "both"):
        print(f"## Speed, prefill (one full forward): {description}, {torch.get_num_threads()} thread(s), "
              f"malloc {args.malloc}, median of {args.repeats}\n")
        header(fns)
        for batch, seq in shapes:
            ids = make_ids(batch, seq)
            medians = time_variants(fns, ids, args.repeats)
            for c in compiled.values():  # one more call with statistics on: the recompute rate of this input
                c.reset_stats()
                c.record_stats(True)
                with torch.no_grad():
                    c(ids)
                c.record_stats(False)
            print(f"| {batch} x {seq} | " + " | ".join(cells(medians, compiled, "ms", 1e3, rates)) + " |",
                  flush=True)
        print("\n(x = speed-up over FP32 in the same run; rate = recompute rate attention / logits on this input; "
              "/ cast = time over model.to(bfloat16)'s)\n")
    if decode:
        context = context_length(model, compiled)
        print(f"## Speed, decode ({args.new_tokens} greedy tokens with a KV cache after the prompt, ms per token): "
              f"{description}, {torch.get_num_threads()} thread(s), malloc {args.malloc}, median of "
              f"{args.repeats}\n")
        header(decoders)
        for batch, seq in shapes:
            prompt = min(seq, context - args.new_tokens)
            ids = make_ids(batch, seq)[:, :prompt]
            medians, tokens = time_decoders(decoders, ids, args.repeats, args.new_tokens)
            for c in compiled.values():  # once more with statistics on: the decode steps' recompute rate
                c.reset_stats()
                c.record_stats(True)
                with torch.no_grad():
                    greedy_decode(lampc_decoder(c), ids, args.new_tokens)
                c.record_stats(False)
            row = cells(medians, compiled, "ms", 1e3, lambda c: rates(c, "decode"))
            for i, name in enumerate(decoders):
                if name != "fp32":
                    match = first_divergence(tokens["fp32"], tokens[name]).float().mean().item()
                    row[i] += f" match {match:.{0 if match == int(match) else 1}f}/{args.new_tokens}"
            label = f"{batch} x {seq}" + (f" (prompt {prompt})" if prompt != seq else "")
            print(f"| {label} | " + " | ".join(row) + " |", flush=True)
        print(f"\n(ms per decode step, the prompt pass untimed; x = speed-up over FP32; match k/N = mean new tokens "
              f"equal to FP32's greedy ones before the first that differs; rate = recompute rate attention / logits "
              f"of the decode steps; / cast = time over model.to(bfloat16)'s)\n")


def accuracy(args):
    from lampc.eval.data import make_sequences, persuasion_text
    from lampc.eval.sweep import Sweep
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    ids = torch.tensor(tokenizer(persuasion_text())["input_ids"])
    sweep = Sweep(model, make_sequences(ids, args.seq_len, args.n_seq, seed=42), batch_size=4, progress=False)
    fns, compiled, _ = variants(model, args)
    for c in compiled.values():
        c.record_stats(True)
    print(f"## Accuracy vs FP32: embedded model, Persuasion, {args.n_seq} x {args.seq_len} tokens\n")
    print("| variant | KL | KL below autocast | flip rate | recompute rate (attention / logits) |")
    print("|---|---|---|---|---|")
    autocast_kl = None
    for name, fn in fns.items():
        if name == "fp32":
            continue
        result = sweep.compare(lambda ids, mask: fn(ids))
        if name == "autocast bf16":
            autocast_kl = result["kl"]
        rate = rates(compiled[name]) if name in compiled else "-"
        print(f"| {name} | {result['kl']:.3e} | {autocast_kl / result['kl']:.1f}x | {result['flip_rate']:.4f} "
              f"| {rate} |", flush=True)
    error_sources(model, sweep)


def error_sources(model, sweep):
    """Where bf16's error comes from: KL vs FP32 with only some matmuls in native bf16 (no look-ahead)."""
    b = bf16(criterion="uniform")
    fp32_logits = SitePolicy(format="fp32", backend="native", criterion="uniform")
    rows = {
        "every matmul (sites='all')": Policy(attention=b, sites="all"),
        "every matmul but lm_head": Policy(attention=b, logits=fp32_logits, sites="all"),
        "lm_head only": Policy(attention=None, logits=b),
        "QKᵀ only": Policy(attention=b),
        "c_fc only (before gelu)": Policy(attention=None, gelu=b),
        "attn/mlp c_proj only (before the residual add and layer_norm)": Policy(attention=None, layer_norm=b),
    }
    print("\n## Where the bf16 error comes from (embedded model, same text, no look-ahead)\n")
    print("| matmuls in bf16 | KL vs FP32 |")
    print("|---|---|")
    for name, policy in rows.items():
        print(f"| {name} | {sweep.measure(lampc.compile(model, policy))['kl']:.3e} |", flush=True)


def ceiling(args):
    """How much faster bf16 can be on this CPU: one GEMM, and the whole model cast to bf16 (no FP32 anywhere)."""
    model = gpt2_124m_shape(args.quick)
    pure = gpt2_124m_shape(args.quick).to(torch.bfloat16)  # same seed: the same weights, rounded
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 768, generator=g), torch.randn(768, 3072, generator=g)
    xb, wb = x.bfloat16(), w.bfloat16()
    fns = {"GEMM 256x768x3072 fp32": lambda ids: x @ w, "GEMM 256x768x3072 bf16": lambda ids: xb @ wb}
    fns["model fp32"] = lambda ids: model(input_ids=ids).logits
    fns["model.to(bfloat16)"] = lambda ids: pure(input_ids=ids).logits
    print(f"## The bf16 ceiling: {torch.get_num_threads()} thread(s), malloc {args.malloc}, median of "
          f"{args.repeats}\n")
    print("| batch x seq | GEMM fp32 | GEMM bf16 (speed-up) | model fp32 | model.to(bfloat16) (speed-up) |")
    print("|---|---|---|---|---|")
    for batch, seq in args.shapes:
        ids = torch.randint(0, 50257, (batch, seq), generator=g)
        t = time_variants(fns, ids, args.repeats)
        gemm, full = list(t.values())[:2], list(t.values())[2:]
        print(f"| {batch} x {seq} | {1e3 * gemm[0]:.2f} ms | {1e3 * gemm[1]:.2f} ms ({gemm[0] / gemm[1]:.2f}x) "
              f"| {1e3 * full[0]:.0f} ms | {1e3 * full[1]:.0f} ms ({full[0] / full[1]:.2f}x) |", flush=True)


def memory(args):
    """Peak memory of one forward per variant and shape, each in a fresh process: the rise of the resident set's
    high-water mark during a second forward (the first compiles the look-ahead kernels); glibc's default malloc,
    so freed large tensors leave the RSS and the peak is the forward's live memory."""
    print("## Peak memory of one forward (rise of the RSS high-water mark), a fresh process per variant\n")
    names = list(variants(gpt2_124m_shape(True), args)[0])  # the prefill variants
    print("| batch x seq | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for batch, seq in args.shapes:
        cells = []
        for name in names:
            cmd = [sys.executable, __file__, "--one", name, "--shapes", f"{batch}x{seq}", "--malloc", "default",
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            cells.append(f"{json.loads(out)['peak_mb']:.0f} MB")
        print(f"| {batch} x {seq} | " + " | ".join(cells) + " |", flush=True)


def one(args):
    (batch, seq), = args.shapes
    fns, compiled, _ = variants(gpt2_124m_shape(False), args)
    for c in compiled.values():  # as deployed (and timed): no statistics taps
        c.record_stats(False)
    ids = torch.randint(0, 50257, (batch, seq))
    with torch.no_grad():
        fns[args.one](ids)  # compiles
        peak = peak_growth_mb(lambda: fns[args.one](ids))
    print(json.dumps({"peak_mb": peak}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="small model and shapes (smoke run)")
    parser.add_argument("--model", default="gpt2-random", help="speed model: gpt2-random (GPT-2-124M shape) "
                        "or a lampc model name (embedded, smollm2-135m)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention-taus", type=floats, default=[1.0, 0.2], help="strict tau at attention sites")
    parser.add_argument("--logits-taus", type=floats, default=[0.01, 0.001], help="strict tau at the logits site")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--malloc", choices=["heap", "default"], default="heap")
    parser.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in p.split("x")) for p in s.split(",")],
                        help="batch x seq list, e.g. 1x256,8x1024 (default 1x256,8x256,1x1024; speed with --quick: "
                        "1x128,2x128)")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile of a LAMP graph "
                        "(prefill only)")
    parser.add_argument("--phase", choices=["prefill", "decode", "both"], default="both",
                        help="speed of full forwards (prefill), of cached greedy decode steps (decode), or both")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode: greedy tokens per prompt (>= 2)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--n-seq", type=int, default=16)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak memory per variant (fresh processes) only")
    parser.add_argument("--ceiling", action="store_true", help="bf16 vs FP32: one GEMM and a model cast to bf16")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one variant's peak memory
    args = parser.parse_args(argv)
    if len(args.attention_taus) != len(args.logits_taus):
        parser.error("--attention-taus and --logits-taus need the same number of values (one LAMP variant each)")
    args.speed_shapes = args.shapes or ([(1, 128), (2, 128)] if args.quick else DEFAULT_SHAPES)
    args.shapes = args.shapes or DEFAULT_SHAPES
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (the first comes from the untimed prompt pass)")
    if args.malloc == "heap":
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:
        return one(args)
    print(f"command: python bench/deploy.py {' '.join(sys.argv[1:])}\n")
    if args.memory:
        return memory(args)
    if args.ceiling:
        return ceiling(args)
    if not args.skip_speed:
        speed(args)
    if not args.skip_accuracy:
        accuracy(args)


if __name__ == "__main__":
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)  # the numbers below hold for this CPU
    main()
