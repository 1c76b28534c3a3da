"""Generation with a KV cache: speed of prefill and decode, and how long LAMP keeps FP32's greedy continuation.

    python bench/generate.py                          # both models, speed and generation metrics (~25 min)
    python bench/generate.py --model embedded --quick # a smoke run
    python bench/generate.py --skip-speed             # generation metrics only

Speed (one prompt of --prompt-len tokens of Persuasion, --new-tokens greedy tokens, EOS ignored, 1 thread, the
variants interleaved in every repetition, median over repetitions): a timing streamer records the moment each
token is handed out, so the prefill time is prompt -> first new token, and each decode step is the time between
two new tokens. Variants: Hugging Face's `model.generate` on the FP32 model (eager attention, its own dynamic
cache); lampc at m23 (FP32 math through the rewritten graphs); m4 uniform and strict (emulated, bit-exact
rounding); native bf16, uniform (every matmul a bf16 GEMM, sites="all") and LAMP (the same plus strict look-ahead
at attention and logits, fused), on CPUs with bf16 units. lampc variants run with statistics off (as deployed).
"decode early/late" are the mean step times over the first and the last quarter of the new tokens: their ratio
shows how decode cost grows with the number of generated tokens (only the attention over the cache should grow).

Generation metrics (lampc.eval.generation, via `run_sweep(generate=...)`): --n-prompts prompts, --new-tokens
greedy tokens each; per cell the mean number of new tokens equal to FP32's before the first divergence, the share
of identical continuations, and the recompute rates of prefill and of decode steps; KL/flips on the prompt windows
come with it. Cells: m4 uniform, strict at two taus, random at strict's per-row counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers.generation.streamers import BaseStreamer

from lampc import Policy, SitePolicy
from lampc.cells import CellCompiler
from lampc.eval.sweep import load_sequences, run_sweep
from lampc.models import load_model
from lampc.runtime.hardware import native_speed
from machine import describe_machine  # bench/machine.py: this script's directory is on sys.path

STRICT_TAUS = {"embedded": (1.0, 0.2), "smollm2-135m": (0.1, 0.03)}
"""strict taus per model: about 2-3% and 6-9% recompute on 256-token windows (bench/accuracy*.md)."""


class TimingStreamer(BaseStreamer):
    """Records the time of every put: [prompt, new token 1, new token 2, ...]."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def prefill_and_steps(self) -> tuple[float, list[float]]:
        t = self.times
        return t[1] - t[0], [b - a for a, b in zip(t[1:], t[2:])]


def speed_variants(model, has_bf16: bool, strict_tau: float) -> dict:
    compiler = CellCompiler(model)
    bf16 = dict(format="bf16", backend="native", criterion="strict", fused=True)
    out = {
        "HF FP32 generate": None,
        "lampc m23": compiler(format="m23", criterion="uniform"),
        "lampc m4 uniform (emulated)": compiler(format="m4", criterion="uniform"),
        f"lampc m4 strict tau={strict_tau:g} (emulated)": compiler(format="m4", criterion="strict", tau=strict_tau),
    }
    if has_bf16:
        out["lampc bf16 uniform (native, all matmuls)"] = compiler(format="bf16", backend="native",
                                                                   criterion="uniform", sites="all")
        out["lampc bf16 LAMP (native; attention 1, logits 0.01)"] = compiler(
            Policy(attention=SitePolicy(tau=1.0, **bf16), logits=SitePolicy(tau=0.01, **bf16), sites="all"))
    for compiled in out.values():
        if compiled is not None:
            compiled.record_stats(False)
    return out


def run_once(model, compiled, ids, new_tokens: int) -> tuple[float, list[float]]:
    streamer = TimingStreamer()
    with torch.no_grad():
        if compiled is None:
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, streamer=streamer)
        else:
            compiled.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], streamer=streamer)
    return streamer.prefill_and_steps()


def speed(name: str, model, tokenizer, args) -> str:
    ids, _ = load_sequences(tokenizer, seq_len=args.prompt_len, n_seq=1, seed=args.seed)
    has_bf16 = native_speed(torch.bfloat16, "cuda" if torch.cuda.is_available() else "cpu")[0]
    variants = speed_variants(model, has_bf16, STRICT_TAUS[name][0])
    for compiled in variants.values():  # warm-up: builds the step graphs, fills caches
        run_once(model, compiled, ids, 4)
    prefill = {k: [] for k in variants}
    steps = {k: [] for k in variants}
    for _ in range(args.repeats):
        for label, compiled in variants.items():
            p, s = run_once(model, compiled, ids, args.new_tokens)
            prefill[label].append(p)
            steps[label].append(s)
    rows = []
    quarter = max(1, (args.new_tokens - 1) // 4)

    def per_position(label):  # median over repeats, per decode position
        return [statistics.median(col) for col in zip(*steps[label])]

    hf_step = statistics.median(per_position("HF FP32 generate"))
    for label in variants:
        p = statistics.median(prefill[label])
        per_step = per_position(label)
        step = statistics.median(per_step)
        early, late = statistics.mean(per_step[:quarter]), statistics.mean(per_step[-quarter:])
        rows.append([label, f"{args.prompt_len / p:.0f}", f"{1000 * p:.0f}", f"{1 / step:.1f}", f"{1000 * step:.1f}",
                     f"{step / hf_step:.2f}x", f"{1000 * early:.1f} / {1000 * late:.1f} ({late / early:.2f}x)"])
    header = ["variant", "prefill tok/s", "prefill ms", "decode tok/s", "decode ms/token", "decode vs HF",
              "decode early / late ms"]
    return (f"### Speed: {name}, 1 x {args.prompt_len}-token prompt, {args.new_tokens} new tokens, "
            f"median of {args.repeats}\n\n" + md_table(header, rows))


def generation_metrics(name: str, model, tokenizer, args, shuffle: bool) -> str:
    taus = STRICT_TAUS[name]
    rows = run_sweep(model, tokenizer, formats=["m4"], criteria=["uniform", "strict", "random"],
                     taus={"strict": list(taus), "random": list(taus)}, seq_len=args.prompt_len, n_seq=args.n_prompts,
                     seed=args.seed, shuffle=shuffle, batch_size=args.batch_size,
                     generate=(args.n_prompts, args.new_tokens), progress=False, model_name=name)
    uniform = next(r for r in rows if r["criterion"] == "uniform")
    body = []
    for r in rows:
        longer = r["gen_match_tokens"] / uniform["gen_match_tokens"] if uniform["gen_match_tokens"] else float("nan")
        body.append([r["criterion"], "-" if r["tau"] is None else f"{r['tau']:g}",
                     f"{100 * r['recompute_rate']:.2f}%", f"{100 * r['gen_prefill_rate']:.2f}%",
                     f"{100 * r['gen_decode_rate']:.2f}%", f"{r['gen_match_tokens']:.1f}", f"{longer:.2f}x",
                     f"{100 * r['gen_identical']:.0f}%", f"{r['kl']:.2e}", f"{100 * r['flip_rate']:.2f}%"])
    header = ["m4 criterion", "tau", "rate (windows)", "prefill rate", "decode rate", "tokens = FP32",
              "vs uniform", "identical", "KL (windows)", "flips (windows)"]
    text = "shuffled Persuasion" if shuffle else "Persuasion"
    return (f"### Generation: {name}, {args.n_prompts} prompts of {args.prompt_len} tokens of {text}, "
            f"{args.new_tokens} greedy tokens\n\n" + md_table(header, body))


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="both", choices=("both", "embedded", "smollm2-135m"))
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--shuffled", action="store_true", help="also the generation metrics on shuffled text")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompt_len, args.new_tokens, args.n_prompts, args.repeats = 32, 8, 2, 1
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}, {torch.get_num_threads()} thread(s)\ncommand: python bench/generate.py {' '.join(argv or sys.argv[1:])}\n")
    names = ["embedded", "smollm2-135m"] if args.model == "both" else [args.model]
    for name in names:
        model, tokenizer = load_model(name)
        if not args.skip_speed:
            print(speed(name, model, tokenizer, args) + "\n", flush=True)
        if not args.skip_generation:
            for shuffle in (False, True) if args.shuffled else (False,):
                print(generation_metrics(name, model, tokenizer, args, shuffle) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
