"""`LampcLM`: a LAMP-compiled model as an lm-evaluation-harness model, registered as "lampc".

    import lampc.tasks, lm_eval
    lm_eval.simple_evaluate(model="lampc", model_args="model=embedded,format=m4,criterion=strict,tau=0.1",
                            tasks=lampc.tasks.austen_tasks())

model_args: `model` (embedded, smollm2-135m or a model directory), `fp32=True` for the uncompiled FP32 model (the
reference every comparison is made against), `kinds` (site kinds joined by "+", e.g. attention+logits), `policy`
(a JSON/YAML file with per-kind policies, as `lampc eval --policy`), `batch_size`, `max_length`, `kl` (default
True: the mean KL(FP32 || model) over the scored answer tokens, in float64, from the FP32 model run on the same
batch), `device`, and every SitePolicy field (format, criterion, tau, budget, block_k, backend, fused, ...); each
is checked before anything is loaded (lampc/tasks/model_args.py). From lm-eval's own command line:

    python -m lampc.tasks.lm_eval_cli --model lampc --model_args model=embedded,format=m4 --tasks austen_choice

Scoring (`loglikelihood`, `loglikelihood_rolling`) pads on the right: with causal attention and positions 0..T-1
the padding changes no scored position, so a batched score equals the unbatched one. Generation
(`generate_until`) pads on the left and runs the compiled model's own `generate` (KV cache, greedy unless the task
asks to sample), then cuts the text at the task's first stop string (or the end-of-text token). The KL of a
generation task is that of the first answer token's distribution, given the prompt.
"""

from __future__ import annotations

import math
from typing import Any

import lm_eval.models  # noqa: F401  lm-eval's own models first: it fills an empty registry only
import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from torch import Tensor

from ..api import compile as compile_model
from ..models import load_model
from .model_args import read_model_args
from .passkey_task import lend_tokenizer
from .progress import Progress, to_stderr


@register_model("lampc")
class LampcLM(TemplateLM):
    def __init__(self, model: str = "embedded", *, loaded=None, compiler=None, max_batch_size=None, **model_args):
        """model_args: as the module docstring lists them, checked before anything is loaded (lampc/tasks/
        model_args.py). loaded: (model, tokenizer) already loaded (else `model` is loaded); compiler: what compiles
        the model under the policy (default lampc.compile; a sweep passes its CellCompiler, which captures once).
        max_batch_size (lm-eval's, for batch_size=auto) is not used.

        Progress: `report` (a callable taking a line; default stderr, None for silence) hears every
        `report_every` seconds how many of a call's requests are done, under `label`; `requests_done` counts
        them all (windows, for rolling loglikelihood)."""
        super().__init__()
        args = read_model_args(model, **model_args)
        self.fp32_model, self.tokenizer = loaded if loaded is not None else load_model(args.model)
        self.where = args.device
        self.fp32_model.to(self.where)
        self.name = args.model
        self.batch_size = args.batch_size
        config = self.fp32_model.config
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024
        self.max_length = min(args.max_length or limit, limit)
        lend_tokenizer(self.name, self.tokenizer, self.max_length)  # the passkey task's documents, made after it
        self.fp32 = args.fp32
        self.compiled = None
        if not self.fp32:
            if compiler is None:
                # lazy: only generative tasks decode, and they build the step graphs they use (no warning)
                self.compiled = compile_model(self.fp32_model, args.base, steps="lazy", **args.overrides)
            else:
                self.compiled = compiler(args.base, **args.overrides)
        self.kl_enabled = args.kl and not self.fp32
        self.kl_sum, self.kl_count = 0.0, 0
        self.report, self.report_every, self.label = to_stderr, 5.0, f"lampc {self.name}"
        self.requests_done = 0

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> "LampcLM":
        """lm-eval's way in: its --model_args (arg_dict) and its own batch_size, device and max_batch_size. A
        model_args batch_size wins over lm-eval's (whose CLI default is 1); lm-eval's device is its --device
        (default cuda:0), which falls back to the CPU where it does not exist (model_args.py)."""
        harness = {k: v for k, v in (additional_config or {}).items() if v is not None}
        args = dict(arg_dict)
        if "batch_size" in harness:
            args.setdefault("batch_size", harness.pop("batch_size"))
        if "device" in harness:
            args["lm_eval_device"] = harness.pop("device")
        return cls(**args, **harness)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "LampcLM":
        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    # -- lm-eval's interface -------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(sum of log p(continuation | context), whether the continuation is the greedy one) per request."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        size = override_bs or self.batch_size
        progress = self._progress(len(requests), disable_tqdm)
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            rows = [self._scored_window(requests[i][1], requests[i][2]) for i in batch]
            logprobs = self._log_probs([tokens for tokens, _ in rows], [n for _, n in rows])
            for i, (tokens, n_scored), rowp in zip(batch, rows, logprobs):
                results[i] = _continuation_score(rowp, tokens, n_scored)
            progress.advance(len(batch))
            self.requests_done += len(batch)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log p over every token of each document, in disjoint windows of the model's context length."""
        windows, owners = [], []
        for owner, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        progress = self._progress(len(requests), disable_tqdm)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for indices in groups.values():
            options = dict(requests[indices[0]].args[1])
            until = options.pop("until", None) or []
            until = ([until] if isinstance(until, str) else list(until)) + [self.tok_decode([self.eot_token_id])]
            max_new = int(options.pop("max_gen_toks", 32))
            do_sample = bool(options.pop("do_sample", False))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):] for i in batch]
                if self.kl_enabled:  # the first answer token's distribution, against FP32's
                    self._log_probs([p + [self.eot_token_id] for p in prompts], [1] * len(prompts))
                for i, text in zip(batch, self._generate(prompts, max_new, do_sample, options)):
                    results[i] = _cut(text, until)
                progress.advance(len(batch))
                self.requests_done += len(batch)
        return results

    def _progress(self, total: int, disable: bool) -> Progress:
        return Progress(None if disable else self.report, self.label, total, every=self.report_every)

    # -- the model -----------------------------------------------------------------------------------------

    def _scored_window(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """The tokens the model reads (context + continuation, minus the last, at most max_length of them) and how
        many of the last positions are scored."""
        whole = (context + continuation)[-(self.max_length + 1):]
        return whole, min(len(continuation), len(whole) - 1)

    def _log_probs(self, sequences: list[list[int]], scored: list[int]) -> list[Tensor]:
        """log-softmax rows (float64) of each sequence's positions 0..n-2, from one right-padded batch; the KL
        against FP32 counts the positions that predict the last `scored[i]` tokens of sequence i (the answer)."""
        inputs = [tokens[:-1] for tokens in sequences]
        ids, mask = self._padded(inputs, left=False, min_width=2)  # the full-sequence graph takes T >= 2
        with torch.no_grad():
            logits = self._logits(ids, mask)
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            if self.kl_enabled:
                reference = torch.log_softmax(self.fp32_model(input_ids=ids, attention_mask=mask).logits.double(), -1)
                self._add_kl(reference, logprobs, sequences, scored)
        return [logprobs[row, :len(tokens)].cpu() for row, tokens in enumerate(inputs)]

    @property
    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id

    def _padded(self, rows: list[list[int]], *, left: bool, min_width: int = 1) -> tuple[Tensor, Tensor]:
        """(ids, attention mask) of one batch on the model's device, padded on the left or on the right."""
        width = max(min_width, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(rows):
            where = slice(width - len(tokens), width) if left else slice(0, len(tokens))
            ids[row, where] = torch.tensor(tokens)
            mask[row, where] = 1
        return ids.to(self.where), mask.to(self.where)

    def _logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        model = self.fp32_model if self.compiled is None else self.compiled
        return model(input_ids=ids, attention_mask=mask).logits

    def _add_kl(self, reference: Tensor, logprobs: Tensor, sequences: list[list[int]], scored: list[int]) -> None:
        """KL(FP32 || model) (float64) at the positions whose next token is scored, summed for the mean."""
        for row, (tokens, n_scored) in enumerate(zip(sequences, scored)):
            n = len(tokens) - 1
            first = n - n_scored
            p, q = reference[row, first:n], logprobs[row, first:n]
            self.kl_sum += float((p.exp() * (p - q)).sum())
            self.kl_count += n - first

    def _generate(self, prompts: list[list[int]], max_new: int, do_sample: bool, options: dict) -> list[str]:
        ids, mask = self._padded(prompts, left=True)
        width = ids.shape[1]
        settings = dict(max_new_tokens=max_new, do_sample=do_sample, pad_token_id=self._pad_id,
                        eos_token_id=self.eot_token_id)
        if do_sample and "temperature" in options:
            settings["temperature"] = float(options["temperature"])
        with torch.no_grad():
            if self.compiled is None:
                out = self.fp32_model.generate(input_ids=ids, attention_mask=mask, **settings)
            else:
                out = self.compiled.generate(ids, mask, **settings)
        return [self.tok_decode(row[width:].tolist()) for row in out]

    # -- what a comparison reads ---------------------------------------------------------------------------

    def reset_measurements(self) -> None:
        """Start the KL and the recompute rate afresh (one task's account)."""
        self.kl_sum, self.kl_count = 0.0, 0
        if self.compiled is not None:
            self.compiled.reset_stats()

    @property
    def mean_kl(self) -> float:
        """Mean KL(FP32 || model) per scored token so far (nats; nan before any scoring or for the FP32 model)."""
        return self.kl_sum / self.kl_count if self.kl_count else math.nan

    def recompute_rate(self) -> float:
        """The compiled model's recompute rate over every call so far (nan for the FP32 model)."""
        if self.compiled is None:
            return math.nan
        stats = self.compiled.stats()
        totals = [stats["overall"]] + [stats[p]["overall"] for p in ("prefill", "decode") if p in stats]
        visible = sum(t["visible"] for t in totals)
        return sum(t["selected"] for t in totals) / visible if visible else math.nan


def _continuation_score(logprobs: Tensor, tokens: list[int], n_scored: int) -> tuple[float, bool]:
    """Sum of the log-probabilities of the last n_scored tokens, and whether each was the argmax."""
    targets = torch.tensor(tokens[-n_scored:])
    rows = logprobs[len(tokens) - 1 - n_scored:len(tokens) - 1]
    picked = rows.gather(-1, targets[:, None]).squeeze(-1)
    return float(picked.sum()), bool((rows.argmax(dim=-1) == targets).all())


def _cut(text: str, until: list[str]) -> str:
    """text up to (not including) the first stop string that occurs in it."""
    cut = len(text)
    for stop in until:
        if stop and stop in text:
            cut = min(cut, text.index(stop))
    return text[:cut]
