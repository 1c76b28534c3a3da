"""What a sweep's numbers do not say by themselves: notes printed beside the tables and kept in results.json.

    sweep_notes(rows)                         -> ["note: attention rows are short here ...", "warning: ..."]
    generation_notes(prefill_keys, decode_keys)
    flush_note(rows)                          -> "note: FP32 work ..." (a sweep where some cell flushes)

- Short rows. A look-ahead rule weighs each key by its share of its softmax row. A row with few visible keys (a
  6-token prompt: 3.5 keys on average) gives every key a large share, so a larger fraction passes the threshold:
  the same rule recomputes tens of percent of a short prompt's entries and a few percent at 256 tokens. The note
  states the mean visible keys per row whenever it is below SHORT_ROW_KEYS.
- Nothing to measure. A model whose attention is near uniform (scores near 0, as with randomly initialised
  weights) barely changes in low precision: every KL is ~0 and an absolute rule (strict) recomputes nothing. The
  warning fires when every low-precision cell's KL, scaled by the format's resolution (KL x 4^m, the square of the
  rounding step), is below NEAR_ZERO_SCALED_KL: a trained model is ~1000x above it (lampc's embedded GPT-2 at m4:
  8.9e-5 x 256 = 2.3e-2; a random GPT-2: 2.1e-10 x 256 = 5.4e-8).
- FP32 work. A flushed accumulator (lampc eval --flush-every's baselines, a policy file's flush_every) spends FP32
  additions that no recompute rate counts: the note defines the "FP32 work" column it is compared on
  (lampc.eval.fp32_work).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..criteria import NO_LOOKAHEAD

SHORT_ROW_KEYS = 32
"""Below this mean number of visible keys per attention row, recompute rates are those of short rows."""

NEAR_ZERO_SCALED_KL = 1e-5
"""KL x 4^m_bits below this in every low-precision cell: low precision changes (almost) nothing here."""

FP32_M_BITS = 23

WHY_SHORT = ("with few keys each one carries a large share of its softmax row, so the look-ahead recomputes a "
             "larger fraction of them; recompute rates fall as rows grow (compare rates at the length you deploy)")


def short_rows_note(keys_per_row: float | None, where: str = "attention rows") -> str | None:
    """The note for a mean of `keys_per_row` visible keys per row, or None when rows are long enough."""
    if keys_per_row is None or keys_per_row >= SHORT_ROW_KEYS:
        return None
    return (f"note: {where} are short: {keys_per_row:.1f} visible keys per row on average (below "
            f"{SHORT_ROW_KEYS}); {WHY_SHORT}")


def near_zero_warning(rows: Sequence[dict]) -> str | None:
    """The warning when every low-precision cell's KL is ~0 for its format (see the module docstring)."""
    low = [r for r in rows if isinstance(r.get("m_bits"), int) and r["m_bits"] < FP32_M_BITS]
    if not low or any(not _finite(r.get("kl")) or r["kl"] * 4.0 ** r["m_bits"] >= NEAR_ZERO_SCALED_KL for r in low):
        return None
    worst = max(low, key=lambda r: r["kl"])
    rules = [r for r in low if r["criterion"] != NO_LOOKAHEAD]
    nothing = rules and all(r.get("recompute_rate") == 0 for r in rules)
    recomputed = " and no cell recomputed any entry" if nothing else ""
    return (f"warning: KL is ~0 in every low-precision cell (at most {worst['kl']:.1e}, at {worst['format']})"
            f"{recomputed}: this model's outputs barely change in low precision, as when its attention is near "
            "uniform (scores near 0), e.g. randomly initialised weights; LAMP has nothing to protect here, so "
            "measure a trained model")


FLUSH_NOTE = ("note: FP32 work is the share of the accumulation done in FP32, per accumulated term: a recomputed "
              "entry redoes its K terms in FP32 (unflushed, a rule's FP32 work is its recompute rate), flush n adds "
              "ceil(K / (n x block_k)) FP32 additions to every entry and recomputes none (K: the dot product's "
              "length, head_dim at attention; flush n = 1 at block_k 1 is 100%); the mean over sites, as the rate")


def flush_note(rows: Sequence[dict]) -> str | None:
    """The definition of FP32 work, when some row flushes (a flush baseline, or a policy file's flush_every)."""
    return FLUSH_NOTE if any(r.get("flush_every") not in (None, "") for r in rows) else None


def sweep_notes(rows: Sequence[dict]) -> list[str]:
    """Every note that applies to a sweep's rows (eval's forward cells and, with --generate, its decoding)."""
    keys = [r["visible_keys_per_row"] for r in rows if _finite(r.get("visible_keys_per_row"))]
    notes = [short_rows_note(min(keys)) if keys else None]
    prefill = [r["gen_prefill_keys_per_row"] for r in rows if _finite(r.get("gen_prefill_keys_per_row"))]
    decode = [r["gen_decode_keys_per_row"] for r in rows if _finite(r.get("gen_decode_keys_per_row"))]
    notes += generation_notes(min(prefill, default=None), min(decode, default=None))
    notes.append(near_zero_warning(rows))
    notes.append(flush_note(rows))
    return [n for n in notes if n]


def generation_notes(prefill_keys: float | None, decode_keys: float | None) -> list[str]:
    """The short-row notes of generation's prefill and decode rates."""
    notes = [short_rows_note(prefill_keys, "prefill's attention rows (the prompts)"),
             short_rows_note(decode_keys, "decode steps' attention rows")]
    return [n for n in notes if n]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
