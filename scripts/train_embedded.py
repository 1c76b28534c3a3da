"""Train lampc's embedded model: a small GPT-2 on five Jane Austen novels (Persuasion held out).

    python scripts/train_embedded.py --minutes 40 --out lampc/models/embedded

No package ships GPT-2 weights and nothing may be downloaded at run time, so lampc trains its own. The run is
seeded, time-boxed (the cosine schedule follows the fraction of the time budget spent, or of `--steps` if given),
and resumable: a checkpoint is written to `--ckpt-dir` (default `train_ckpt/`, gitignored) every few minutes and
a rerun with the same arguments continues from it. At the end it writes to `--out`: config.json,
model.safetensors, the tokenizer files, eval.json (numbers the tests check) and MODEL_CARD.md.
`--card-only` recomputes eval.json and the card from the weights already in `--out`.

Not run by CI (it takes tens of minutes); the tests only load what it wrote. Kept out of the installed package
(a tool of this repository, not of lampc's users): run from a clone where lampc is installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lampc.eval.data import HELD_OUT, austen_novels, make_sequences, read_text
from lampc.models.load import EMBEDDED_DIR, load_model

EOS = "<|endoftext|>"
DEFAULT_SLICE = EMBEDDED_DIR / "persuasion_slice.txt"


# ---- tokenizer -----------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme: bytes mapped to printable characters, no unknown token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


# ---- measurements (also used for the model card) -------------------------------------------------------------


@torch.no_grad()
def perplexity(model: GPT2LMHeadModel, ids: torch.Tensor, window: int, batch: int = 8) -> tuple[float, int]:
    """exp(mean next-token NLL) over `ids` cut into consecutive non-overlapping windows of `window` tokens (the
    last one may be shorter); each window is scored on its own, so its first token is context only.
    Returns (perplexity, number of predicted tokens)."""
    chunks = [ids[i : i + window] for i in range(0, ids.numel(), window)]
    chunks = [c for c in chunks if c.numel() > 1]
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        group = chunks[i : i + batch]
        for length in sorted({c.numel() for c in group}):  # equal lengths batch together, no padding needed
            x = torch.stack([c for c in group if c.numel() == length])  # (b, T)
            logits = model(x).logits[:, :-1].double()  # (b, T-1, V)
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
            total += float(nll)
            count += x[:, 1:].numel()
    return math.exp(total / count), count


@torch.no_grad()
def attention_peakedness(model: GPT2LMHeadModel, windows: torch.Tensor) -> float:
    """Mean over layers, heads, windows and query rows of the row's largest attention weight (eager attention)."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        attn = model(windows, output_attentions=True).attentions  # n_layer x (B, H, T, T)
    finally:
        model.config._attn_implementation = impl
    return float(torch.stack([a.amax(-1).mean() for a in attn]).mean())


def validation_windows(tokenizer: PreTrainedTokenizerFast, seq_len: int, n: int) -> torch.Tensor:
    return make_sequences(encode(tokenizer, austen_novels()[HELD_OUT]), seq_len, n, seed=0)


# ---- training ------------------------------------------------------------------------------------------------


def lr_at(progress: float, peak: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` fraction of the run, then cosine decay to peak/10."""
    if progress < warmup:
        return peak * progress / warmup
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def make_model(args: argparse.Namespace, vocab_size: int, eos_id: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    return GPT2LMHeadModel(config)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    novels = austen_novels()
    train_texts = [text for title, text in novels.items() if title != HELD_OUT]

    tok_dir = ckpt_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer(train_texts, args.vocab_size)
        tokenizer.model_max_length = args.n_positions
        tokenizer.save_pretrained(tok_dir)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    parts = []
    for text in train_texts:
        parts += [encode(tokenizer, text), torch.tensor([eos_id])]
    train_ids = torch.cat(parts)
    val = validation_windows(tokenizer, args.seq_len, args.val_windows)
    log(f"train tokens {train_ids.numel()}  vocab {len(tokenizer)}  val windows {tuple(val.shape)}")

    model = make_model(args, len(tokenizer), eos_id)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "elapsed": 0.0, "history": []}
    ckpt = ckpt_dir / "ckpt.pt"
    if ckpt.is_file() and not args.fresh:
        saved = torch.load(ckpt, weights_only=False)
        if saved["args"] != run_key(args):
            raise SystemExit(f"{ckpt} is from a run with other arguments; pass --fresh to start over")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        log(f"resumed at step {state['step']}, {state['elapsed'] / 60:.1f} min done")

    budget = args.minutes * 60.0
    n_params = sum(p.numel() for p in model.parameters())
    log(f"params {n_params}  budget {args.minutes} min  steps {args.steps or 'time-boxed'}")
    last_ckpt = last_eval = time.monotonic()
    t_mark = time.monotonic()
    model.train()
    while True:
        progress = state["step"] / args.steps if args.steps else state["elapsed"] / budget
        if progress >= 1.0:
            break
        lr = lr_at(progress, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(train_ids.numel() - args.seq_len, (args.batch_size,), generator=gen)
        x = train_ids[starts[:, None] + torch.arange(args.seq_len)]  # (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        now = time.monotonic()
        state["elapsed"] += now - t_mark
        t_mark = now
        if state["step"] % args.log_every == 0:
            log(f"step {state['step']}  loss {loss.item():.4f}  lr {lr:.2e}  {state['elapsed'] / 60:.1f} min")
        if now - last_eval > args.eval_minutes * 60:
            ppl = evaluate(model, val)
            state["history"].append({"step": state["step"], "minutes": state["elapsed"] / 60, "val_ppl": ppl})
            log(f"step {state['step']}  val ppl (subset) {ppl:.2f}")
            last_eval = t_mark = time.monotonic()  # evaluation time is not training time
        if now - last_ckpt > args.ckpt_minutes * 60:
            save_ckpt(ckpt, model, opt, gen, state, args)
            last_ckpt = t_mark = time.monotonic()
    save_ckpt(ckpt, model, opt, gen, state, args)
    log(f"done: {state['step']} steps, {state['elapsed'] / 60:.1f} min of training")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    training = {k: v for k, v in vars(args).items() if k not in ("out", "ckpt_dir", "fresh", "card_only")}
    training.update(steps_done=state["step"], train_minutes=round(state["elapsed"] / 60, 2),
                    train_tokens=int(train_ids.numel()), n_params=n_params, history=state["history"])
    (out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    write_card(out, Path(args.slice))


def evaluate(model: GPT2LMHeadModel, val: torch.Tensor) -> float:
    model.eval()
    ppl = perplexity(model, val.flatten(), val.shape[1])[0]
    model.train()
    return ppl


def run_key(args: argparse.Namespace) -> dict:
    """The arguments that must match for a checkpoint to be resumed. `--minutes` may change: the schedule then
    stretches (or shrinks) to the new budget from where the run is."""
    skip = ("out", "fresh", "card_only", "log_every", "eval_minutes", "ckpt_minutes", "threads", "slice", "minutes")
    return {k: v for k, v in vars(args).items() if k not in skip}


def save_ckpt(path, model, opt, gen, state, args) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "state": state, "args": run_key(args)}, tmp)
    tmp.replace(path)
    log(f"checkpoint at step {state['step']}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- artifacts -----------------------------------------------------------------------------------------------


def write_card(out: Path, slice_path: Path) -> None:
    """Measure the saved model as `lampc.models.load_model` loads it; write eval.json and MODEL_CARD.md."""
    model, tokenizer = load_model(str(out))
    training = json.loads((out / "training.json").read_text())
    seq_len = training["seq_len"]
    persuasion = encode(tokenizer, austen_novels()[HELD_OUT])
    val_ppl, val_tokens = perplexity(model, persuasion, seq_len)
    peak = {w: attention_peakedness(model, validation_windows(tokenizer, w, 16)) for w in sorted({256, seq_len})}
    slice_ids = encode(tokenizer, read_text(slice_path))
    slice_ppl, slice_tokens = perplexity(model, slice_ids, seq_len)
    size_mb = (out / "model.safetensors").stat().st_size / 2**20
    results = {
        "persuasion_ppl": val_ppl, "persuasion_tokens": val_tokens, "window": seq_len,
        "attention_peakedness": peak[seq_len], "peakedness_windows": 16,
        "attention_peakedness_by_window": {str(w): v for w, v in peak.items()},
        "slice_file": "lampc/models/embedded/persuasion_slice.txt", "slice_ppl": slice_ppl, "slice_tokens": slice_tokens,
    }
    (out / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"Persuasion ppl {val_ppl:.2f}  peakedness {peak}  slice ppl {slice_ppl:.4f}  {size_mb:.1f} MB")
    peak_rows = "".join(
        f"| attention peakedness, windows of {w}: mean over layers, heads and rows of the row's max attention "
        f"weight (16 Persuasion windows) | **{v:.3f}** |\n" for w, v in peak.items()
    )
    curve = ", ".join(f"{h['val_ppl']:.0f} at step {h['step']}" for h in training["history"])
    notes = "".join(f"\n\nNote: {n}" for n in training.get("notes", []))
    (out / "MODEL_CARD.md").write_text(CARD.format(
        t=training, r=results, size_mb=size_mb, head_dim=training["n_embd"] // training["n_head"],
        peak_rows=peak_rows, curve=curve or "none recorded", notes=notes))


CARD = """\
# lampc embedded model: a small GPT-2 trained on Jane Austen

lampc's default model for tests, examples and the accuracy protocol. No package ships GPT-2 weights and lampc
downloads nothing at run time, so it ships its own: `lampc.models.load_model("embedded")`.

## Model

`GPT2LMHeadModel` (Hugging Face transformers), FP32 weights in `model.safetensors` ({size_mb:.1f} MB).

| | |
|---|---|
| layers / heads / width | {t[n_layer]} / {t[n_head]} / {t[n_embd]} (head dim {head_dim}, like GPT-2) |
| context (n_positions) | {t[n_positions]} (trained on windows of {t[seq_len]}) |
| vocabulary | {t[vocab_size]} byte-level BPE tokens, `<|endoftext|>` = BOS = EOS |
| embeddings | input and output tied |
| parameters | {t[n_params]:,} |

## Data

Jane Austen's six novels from Debian's `r-cran-janeaustenr` (MIT; the novels are public domain), read by
`lampc.eval.data.austen_novels()` with paragraphs reflowed to one line each. The tokenizer and the model were
trained on five novels (Sense & Sensibility, Pride & Prejudice, Mansfield Park, Emma, Northanger Abbey;
{t[train_tokens]:,} tokens, novels separated by `<|endoftext|>`). **Persuasion is held out** for validation.

## Training

AdamW (betas 0.9/0.95, weight decay {t[weight_decay]} on matrices), peak learning rate {t[lr]}, linear warmup over
the first {t[warmup]:.0%} then cosine decay to a tenth, following the fraction of the time budget spent; gradient
clipping at 1.0; dropout {t[dropout]}; batches of {t[batch_size]} random windows of {t[seq_len]} tokens;
bf16 autocast: {t[bf16]} (weights and optimizer state in FP32); seed {t[seed]}; {t[threads]} CPU threads on a
shared 2-core machine. **{t[steps_done]} steps, {t[train_minutes]:.1f} minutes of training** (wall time, periodic
evaluation and checkpointing excluded). Validation perplexity during training (24 fixed Persuasion windows):
{curve}.{notes}

## Evaluation (eval.json)

| measure | value |
|---|---|
| perplexity on Persuasion (all of it, {r[persuasion_tokens]:,} predicted tokens, windows of {r[window]}) | **{r[persuasion_ppl]:.2f}** |
{peak_rows}| perplexity on `{r[slice_file]}` ({r[slice_tokens]:,} predicted tokens) | {r[slice_ppl]:.4f} |

Perplexity = exp(mean next-token NLL), each window scored on its own (its first token is context only).
Peakedness includes every query row (row 0 attends only to itself, weight 1); longer windows spread attention
over more keys, so the number falls as the window grows.
The slice number is what `tests/test_embedded_model.py` reproduces (relative tolerance 1e-4).

## Reproduce

    apt-get download r-cran-janeaustenr   # done for you on first use of lampc.eval.data (needs apt)
    python scripts/train_embedded.py --minutes {t[minutes]} --out lampc/models/embedded

Seeded, but time-boxed: the learning-rate schedule follows wall time, so a rerun gives a similar, not an
identical, model. `--steps N` makes the schedule follow the step count instead (reproducible on any machine,
though not the same schedule as this run's). Interrupted runs resume from `train_ckpt/`. `--card-only`
re-measures the shipped weights and rewrites this card and eval.json.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=40.0, help="training time budget (wall time)")
    p.add_argument("--steps", type=int, default=0, help="fixed step count instead of the time budget")
    p.add_argument("--out", default=str(EMBEDDED_DIR))
    p.add_argument("--ckpt-dir", default="train_ckpt")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--card-only", action="store_true", help="only re-measure --out and rewrite the card")
    p.add_argument("--slice", default=str(DEFAULT_SLICE), help="fixed text whose perplexity the tests check")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-positions", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of the run")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    p.add_argument("--val-windows", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-minutes", type=float, default=4.0)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.card_only:
        torch.set_num_threads(args.threads)
        write_card(Path(args.out), Path(args.slice))
    else:
        train(args)


if __name__ == "__main__":
    main()
