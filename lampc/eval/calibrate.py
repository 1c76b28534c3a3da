"""Calibration: one threshold per site, so that a target recompute rate (or a target KL) is met with the least KL.

    cal = calibrate(model, tokenizer, rate=0.05, format="m4", criterion="strict")    # or kl=1e-4
    cal.policy          # a Policy whose per_site entries hold each site's tau
    cal.write("calibrated.json")                      # compile, eval, generate and export take it (--policy)

On the calibration windows, in four steps (docs/NUMERICS.md §10):

    1. record    one forward with every site's rule at its kind's tau, recording each site's normalised weights
                 ν = weight / threshold (lampc/lookahead/record.py), through the graph's recorder nodes
                 (lampc/passes/recording.py)
    2. curves    per site ℓ, forwards with ℓ alone in low precision (every other site FP32): no recompute, and
                 tau x CURVE_SCALES; with the histogram, a model of the KL site ℓ leaves at any tau
    3. allocate  the taus with the least modelled KL whose total count meets the rate (lampc/eval/allocate.py)
    4. measure   one forward with the calibrated taus: the rate and KL it really has on the calibration text

For a target KL, steps 3-4 repeat in a bisection over the rate (about ten forwards) for the least rate whose
measured KL is at most the target. The rate is selected / visible entries over all sites (the pooled rate; for
attention-only policies every site has as many visible entries, so it is also the paper's layer mean). Rules with a
threshold only (strict, relaxed); the format, accumulation and error scale are the policy's, unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

from torch import nn

from ..criteria import CALIBRATED
from ..passes.recording import recording
from ..passes.respec import respec_sites, running_policy
from ..policy import NO_RECOMPUTE, Policy, SitePolicy, plain_number
from .allocate import Allocation, SiteCurve, allocate
from .progress import progress_bar, step_line
from .sweep import Sweep, check_seq_len, load_sequences

CURVE_SCALES = (10.0, 1.0, 0.1)
"""The tau scales (times the kind's tau) each site is measured at alone, beside no recompute: the kind's tau should
be in the middle of the range calibration is for (strict's default 0.1 covers rates of about 0.5-20%)."""

KL_SEARCH_STEPS = 10
"""Forwards the KL target's bisection over the rate takes (from 1e-4 to 1: ~1.3x apart in the end)."""


@dataclasses.dataclass
class Calibration:
    """The outcome: the calibrated policy, what each site got, and what was measured on the calibration text."""

    policy: Policy
    target: dict  # {"rate": r} or {"kl": k}
    sites: list[dict]  # per site: site, kind, module, tau (None: no recompute), predicted_rate, alone_kl
    measured: dict  # on the calibration text: rate, layer_mean_rate, kl, flip_rate, predicted_rate, predicted_kl
    data: dict  # the calibration text: dataset, seq_len, n_seq, seed, shuffle

    def to_dict(self) -> dict:
        """The policy file: the Policy (`lampc --policy` reads it) plus a "calibration" block, for the record."""
        return {**self.policy.to_dict(), "calibration": {"target": self.target, "measured": self.measured,
                                                         "data": self.data, "sites": self.sites}}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path


def calibrate(model: nn.Module, tokenizer=None, policy: Policy | SitePolicy | None = None, *,
              rate: float | None = None, kl: float | None = None, **options) -> Calibration:
    """Calibrate one tau per site of `model` for a target total recompute `rate` in (0, 1) or a target `kl` > 0.
    options: those of `Calibrator` (the calibration text, and policy overrides as lampc.compile takes them)."""
    _check_target(rate, kl)
    calibrator = Calibrator(model, tokenizer, policy, **options)
    return calibrator.for_rate(rate) if rate is not None else calibrator.for_kl(kl)


class Calibrator:
    """Steps 1-2 (record, curves) once, on the calibration windows; then `for_rate` / `for_kl` (steps 3-4) for any
    number of targets, one to ten forwards each.

    policy, overrides: as lampc.compile takes them; text (a path, default Persuasion) or token_ids, cut into n_seq
    windows of seq_len tokens with seed (token-shuffled with shuffle)."""

    def __init__(self, model: nn.Module, tokenizer=None, policy: Policy | SitePolicy | None = None, *, text=None,
                 token_ids=None, seq_len: int = 128, n_seq: int = 4, seed: int = 42, shuffle: bool = False,
                 batch_size: int = 4, progress: bool = True, **overrides):
        policy = Policy.from_overrides(policy, **overrides)
        _check_policy(policy)
        check_seq_len(model, seq_len)
        sequences, dataset = load_sequences(tokenizer, text=text, token_ids=token_ids, seq_len=seq_len,
                                            n_seq=n_seq, seed=seed, shuffle=shuffle)
        self.policy, self.progress = policy, progress
        self.data = {"dataset": dataset, "seq_len": seq_len, "n_seq": n_seq, "seed": seed, "shuffle": shuffle}
        self.sweep = Sweep(model, sequences, batch_size=batch_size, progress=progress)
        unfused = {k: dataclasses.replace(getattr(policy, k), fused=False) for k in policy.enabled_kinds()}
        self.compiled = self.sweep.compiler(dataclasses.replace(policy, **unfused))
        self.base = {s.index: self.compiled.policy.site_policy(s.kind, s.index) for s in self.compiled.sites}

        step_line(f"recording the look-ahead's weights at {len(self.base)} sites", progress)
        with recording(self.compiled.graph_module) as recorder:
            self.sweep.compare(_logits(self.compiled))
        self.weights = recorder.sites
        if set(self.weights) != set(self.base):
            raise RuntimeError(f"calibration recorded sites {sorted(self.weights)}, expected {sorted(self.base)}")
        self.usable = sum(w.usable for w in self.weights.values())

        step_line(f"measuring each of {len(self.base)} sites alone at {len(CURVE_SCALES) + 1} thresholds", progress)
        self.curves = _curves(self.sweep, self.compiled, self.base, self.weights, progress=progress)

    def for_rate(self, rate: float) -> Calibration:
        """The least-KL taus whose total recompute rate on the calibration text is at most `rate`."""
        target = _check_target(rate, None)
        rate = target["rate"]
        step_line(f"allocating a {100 * rate:g}% recompute rate, measuring it", self.progress)
        return self._result(target, *self._measure(rate))

    def for_kl(self, kl: float) -> Calibration:
        """The taus of the least rate (bisection, KL_SEARCH_STEPS forwards) whose measured KL is at most `kl`; if
        even rate 0.999 misses it, that one (its measured KL says so)."""
        target = _check_target(None, kl)
        kl = target["kl"]
        step_line(f"searching the least rate with KL <= {kl:g} ({KL_SEARCH_STEPS} forwards)", self.progress)
        return self._result(target, *_search_kl(self._measure, kl, progress=self.progress))

    def _measure(self, target_rate: float) -> tuple[Allocation, dict, dict]:
        allocation = allocate(self.curves, target_rate * self.usable)
        taus = {i: _scaled(self.base[i], lam) for i, lam in allocation.lams.items()}
        self._respec(taus)
        self.compiled.reset_stats()
        measured = self.sweep.measure(self.compiled)
        return allocation, taus, {"rate": measured["recompute_rate_pooled"],
                                  "layer_mean_rate": measured["recompute_rate"], "kl": measured["kl"],
                                  "flip_rate": measured["flip_rate"], "predicted_kl": allocation.kl,
                                  "predicted_rate": sum(allocation.counts.values()) / self.usable}

    def _respec(self, taus: dict[int, SitePolicy]) -> None:
        """The calibrated model runs `taus` at its sites, and says so: its `policy` is the one that compiles to its
        graph (per-site rules read from the node tags, lampc/passes/respec.py) and its sites' rule texts are the
        ones they run. Its only graph is the full-sequence one (the sweep compiles no step graphs for calibration);
        `lampc.compile(model, calibration.policy)` builds a model whose step graphs run the same rules."""
        running = respec_sites(self.compiled.graph_module, taus)
        self.compiled.policy = running_policy(self.compiled.graph_module, self.compiled.policy)
        self.compiled.sites = [dataclasses.replace(s, rule=running[s.index].summary) if s.index in running else s
                               for s in self.compiled.sites]

    def _result(self, target: dict, allocation: Allocation, taus: dict, measured: dict) -> Calibration:
        self._respec(taus)  # the chosen taus (a KL search measures others after them)
        sites, per_site = self.compiled.sites, self.compiled.policy.per_site
        records = [{"site": s.index, "kind": s.kind, "module": s.module, "tau": taus[s.index].tau,
                    "predicted_rate": allocation.counts[s.index] / max(self.weights[s.index].usable, 1),
                    "alone_kl": {_scale_text(lam): kl for lam, kl in self.curves[s.index].measured.items()}}
                   for s in sites]
        return Calibration(dataclasses.replace(self.policy, per_site=per_site), target, records, measured,
                           dict(self.data))


def _check_target(rate, kl) -> dict:
    """{"rate": r} or {"kl": k} as Python floats (numpy and one-element torch scalars are taken; a bool is not)."""
    rate, kl = plain_number(rate), plain_number(kl)
    if (rate is None) == (kl is None):
        raise ValueError("calibrate needs exactly one target: rate (a recompute rate in (0, 1)) or kl (> 0)")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
            raise ValueError(f"calibrate: rate must be a recompute rate in (0, 1), got {rate!r}")
        return {"rate": float(rate)}
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not (math.isfinite(kl) and kl > 0):
        raise ValueError(f"calibrate: kl must be a finite KL divergence > 0, got {kl!r}")
    return {"kl": float(kl)}


def _check_policy(policy: Policy) -> None:
    if policy.per_site:
        raise ValueError("calibrate: the policy already has per-site rules (per_site); start from one without")
    for kind in policy.enabled_kinds():
        site = getattr(policy, kind)
        if site.criterion not in CALIBRATED:
            raise ValueError(f"calibrate: Policy.{kind} has criterion {site.criterion!r}; calibration sets a "
                             f"threshold per site, for the threshold rules ({', '.join(CALIBRATED)})")


def _logits(compiled):
    return lambda ids, mask: compiled(ids, attention_mask=mask).logits


def _curves(sweep: Sweep, compiled, base: dict[int, SitePolicy], weights, *,
            progress: bool = True) -> dict[int, SiteCurve]:
    """Per site ℓ, the KL with ℓ alone in low precision (every other site FP32) at tau x CURVE_SCALES and with no
    recompute: the points its SiteCurve interpolates. The longest step: a progress line per site."""
    fp32 = {i: _no_recompute(p, format="fp32") for i, p in base.items()}
    respec_sites(compiled.graph_module, fp32)
    curves = {}
    scales = (math.inf, *CURVE_SCALES)
    with progress_bar(len(base) * len(scales) * len(sweep.batches), "", enabled=progress) as bar:  # text per site
        for n, (index, site) in enumerate(base.items()):
            bar.set_description(f"site {index} alone ({n + 1} of {len(base)} sites)")
            measured = {}
            for lam in scales:
                respec_sites(compiled.graph_module, {index: _scaled(site, lam)})
                measured[lam] = sweep.compare(_logits(compiled), bar)["kl"]
                if not math.isfinite(measured[lam]):
                    raise RuntimeError(f"calibrate: site {index} alone in low precision gives KL {measured[lam]}")
            respec_sites(compiled.graph_module, {index: fp32[index]})
            curves[index] = SiteCurve(weights[index], measured)
    return curves


def _scale_text(lam: float) -> str:
    return "none" if lam == math.inf else f"tau x {lam:g}"


def _no_recompute(site: SitePolicy, **changes) -> SitePolicy:
    return dataclasses.replace(site, **{**NO_RECOMPUTE, **changes})


def _scaled(site: SitePolicy, lam: float) -> SitePolicy:
    """The site's policy with tau scaled by λ (relaxed: at most 1); no recompute where λ is infinite."""
    if lam == math.inf:
        return _no_recompute(site)
    tau = site.tau * lam
    if site.rule.tau.high is not None:
        tau = min(tau, site.rule.tau.high)
    return dataclasses.replace(site, tau=tau)


def _search_kl(measure, kl: float, *, progress: bool = True):
    """The least rate (bisection in log rate over [1e-4, 1)) whose measured KL is at most `kl`."""
    low, high = 1e-4, 0.999
    best = measure(high)
    step_line(f"rate {100 * high:.3g}%: KL {best[2]['kl']:.3g} (1/{KL_SEARCH_STEPS})", progress)
    if best[2]["kl"] > kl:  # even recomputing almost everything misses the target: the closest, said aloud
        warnings.warn(f"lampc calibrate: KL {kl:g} is out of reach: recomputing 99.9% of the entries leaves KL "
                      f"{best[2]['kl']:.3g} on the calibration text; the policy written is that one", stacklevel=3)
        return best
    for step in range(2, KL_SEARCH_STEPS + 1):
        mid = math.sqrt(low * high)
        trial = measure(mid)
        step_line(f"rate {100 * mid:.3g}%: KL {trial[2]['kl']:.3g} ({step}/{KL_SEARCH_STEPS})", progress)
        if trial[2]["kl"] <= kl:
            high, best = mid, trial
        else:
            low = mid
    return best
