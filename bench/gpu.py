"""The CUDA paths end to end, on a machine with a GPU (issue 23): the Triton producer, the fused attention site, a
compiled model's prefill and decode, native bf16, ONNX Runtime's CUDA provider. Writes bench/gpu.md.

    bash bench/gpu.sh                          # installs what is missing (PyPI only), then runs this on CUDA
    python bench/gpu.py                        # on CUDA: every section, bench/gpu.md
    python bench/gpu.py --device cpu           # a dry run: the same code on the CPU, Triton's interpreter, tiny shapes

Sections, in this order (each in try/except; the report is rewritten after every section, so a timeout or a crash
keeps what ran; a section that would start after --budget seconds is skipped and says so):

    env          GPU, driver, torch / triton / CUDA / onnxruntime versions, ORT's providers
    producer     triton_lp_matmul vs lp_matmul(impl="eager") on the CPU: bit for bit, strict (six formats, random and
                 adversarial operands: overflow, subnormals, NaN/inf) and blocked(32) where block sums are exact;
                 blocked on random operands within the error bound; time vs torch.matmul FP32 (TF32 off) at
                 attention shapes (12 heads, T x 64) and the GPT-2 / SmolLM2 linear shapes
    site         lampc::lamp_scores with its CUDA kernel (lampc/ops/cuda_site.py) vs the op on the CPU: selection
                 equal, ŝ bits equal where nothing is recomputed; time vs the op's default implementation on CUDA
    tests        tests/test_triton_kernels.py with TRITON_INTERPRET=0: every bit-exact test on the GPU itself
    model        the embedded model compiled (m4 strict tau 0.1, fused and unfused), moved to CUDA: prefill logits vs
                 the same compiled model on the CPU, greedy decode tokens vs the CPU's, ms per call and per token
    onnx         export_onnx of the m4 model, ONNX Runtime with CUDAExecutionProvider: logits vs PyTorch, latency vs
                 ORT on the CPU
    native       native bf16 (the README's deployment recipe) on CUDA: FP32, model.to(bfloat16), autocast, lampc
                 uniform bf16, LAMP bf16: time and KL vs FP32

Each timing is the median of --repeats calls after a warm-up (CUDA events; the warm-up, which compiles Triton and
inductor kernels, is reported apart). Nothing is downloaded: the model and text ship with lampc.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# bench/ holds onnx.py: drop this directory from the path so that `import onnx` finds the package (as bench/onnx.py)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1:][:1] == ["cpu"]:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton loads: the CPU dry run interprets the kernels

import warnings  # noqa: E402

import torch  # noqa: E402

# the interpreter's numpy (a dry run) warns where the adversarial operands overflow or meet inf - inf: expected
warnings.filterwarnings("ignore", message="(overflow|invalid value) encountered", category=RuntimeWarning)

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "producer", "site", "tests", "model", "onnx", "native")
FORMATS = ("m4", "m7", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2")


class Run:
    """What the sections share: the device, the sizes, the report so far."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dry = args.dry_run or not self.cuda
        self.start = time.perf_counter()
        self.results: list[dict] = []  # one per section: name, status, seconds, summary, details
        self.header: list[str] = []

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn, repeats: int | None = None) -> float:
        """Median milliseconds of fn() over `repeats` calls (after one warm-up call)."""
        repeats = repeats or self.args.repeats
        fn()
        self.sync()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)

    def first_call_s(self, fn) -> float:
        """Seconds of one call, synchronised: a warm-up that compiles."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


# -- checks ---------------------------------------------------------------------------------------------------------


def same_bits(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, str]:
    """(equal float32 bits with NaN positions equal, a few words on the first difference)."""
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.shape != want.shape:
        return False, f"shapes {tuple(got.shape)} vs {tuple(want.shape)}"
    nan_got, nan_want = torch.isnan(got), torch.isnan(want)
    if not torch.equal(nan_got, nan_want):
        return False, f"NaN positions differ at {int((nan_got ^ nan_want).sum())} entries"
    differ = (got.view(torch.int32) != want.view(torch.int32)) & ~nan_want
    if differ.any():
        where = tuple(differ.nonzero()[0].tolist())
        return False, f"{int(differ.sum())}/{differ.numel()} differ, e.g. at {where}: {got[where]!r} vs {want[where]!r}"
    return True, "bit-identical"


def adversarial(fmt_name: str, batch: int, rows: int, inner: int, cols: int, seed: int = 0):
    """Random operands with an overflowing slice, a subnormal slice and NaN / ±inf / 0·inf entries."""
    from lampc.formats import parse

    fmt = parse(fmt_name)
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(batch, rows, inner, generator=g), torch.randn(batch, inner, cols, generator=g)
    big, small = math.sqrt(min(fmt.max_finite, 3e38) / 8), math.sqrt(fmt.min_normal)
    a[0], b[0] = a[0] * big, b[0] * big
    if batch > 1:
        a[1], b[1] = a[1] * small, b[1] * small
    a[-1, 0, 1], a[-1, 1, 2], b[-1, 3, 0], b[-1, 2, 1] = math.nan, math.inf, -math.inf, math.nan
    a[-1, 2, 4], b[-1, 4, :] = 0.0, math.inf
    return a, b


def exact_operands(batch: int, rows: int, inner: int, cols: int, seed: int = 1):
    """Small nonzero integers times 2^-2..2^2: every block sum is exact in FP32, in any order."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
        return torch.randint(1, 8, shape, generator=g).float() * sign * 2.0 ** torch.randint(-2, 3, shape, generator=g)

    return draw(batch, rows, inner), draw(batch, inner, cols)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- sections -------------------------------------------------------------------------------------------------------


def section_env(run: Run):
    rows = [["python", platform.python_version()], ["torch", torch.__version__],
            ["CUDA (torch build)", torch.version.cuda or "none (CPU build)"]]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows += [["GPU", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, "
                         f"{props.multi_processor_count} SMs"]]
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            rows.append(["driver", smi or "?"])
        except (OSError, subprocess.SubprocessError):
            rows.append(["driver", "nvidia-smi not found"])
    for name in ("triton", "onnxruntime", "transformers", "lampc"):
        try:
            module = __import__(name)
            rows.append([name, getattr(module, "__version__", "?")])
        except Exception as err:  # noqa: BLE001 (a missing package is a finding, not a crash)
            rows.append([name, f"not importable ({type(err).__name__}: {err})"])
    try:
        import onnxruntime

        rows.append(["ORT providers", ", ".join(onnxruntime.get_available_providers())])
    except Exception:  # noqa: BLE001
        pass
    rows.append(["TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")])
    gpu = next((r[1] for r in rows if r[0] == "GPU"), "no GPU")
    run.header = [f"GPU: {gpu}", f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
                                 f"triton {next(r[1] for r in rows if r[0] == 'triton')}"]
    ok = run.cuda == torch.cuda.is_available() or not run.cuda
    return ok, gpu, table(["what", "version"], rows)


def section_producer(run: Run):
    from lampc.kernels.triton_lp_matmul import triton_lp_matmul
    from lampc.numerics import lp_matmul, round_to
    from lampc.numerics.error_bounds import product_error_bound

    dev, rows, ok = run.device, [], True
    t_small = 24 if run.dry else 256
    heads = 2 if run.dry else 12
    for fmt in FORMATS[:3] if run.dry else FORMATS:
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(heads, t_small, 64, generator=g) * 2, torch.randn(heads, 64, t_small, generator=g) * 2
        cases = {"attention, random": (q, k), "adversarial": adversarial(fmt, 3, 12, 37, 10),
                 "blocked(32), exact sums": exact_operands(2, 16, 100, 12)}
        for label, (a, b) in cases.items():
            block_k = 32 if label.startswith("blocked") else 1
            got = triton_lp_matmul(a.to(dev), b.to(dev), fmt, block_k)
            equal, how = same_bits(got, lp_matmul(a, b, fmt, block_k, impl="eager"))
            ok &= equal
            rows.append([fmt, label, "pass" if equal else "FAIL", how])
        got = triton_lp_matmul(q.to(dev), k.to(dev), fmt, 1, scale=0.125)  # the producer's output, scaled
        equal, how = same_bits(got, round_to(lp_matmul(q, k, fmt, 1, impl="eager") * 0.125, fmt))
        ok &= equal
        rows.append([fmt, "attention, output RN(acc * 0.125)", "pass" if equal else "FAIL", how])
        got = triton_lp_matmul(q.to(dev), k.to(dev), fmt, 32).cpu()
        want = lp_matmul(q, k, fmt, 32, impl="eager")
        within = bool(((got - want).abs() <= 2 * product_error_bound(q, k, fmt, block_k=32)).all())
        ok &= within
        rows.append([fmt, "blocked(32), random", "pass" if within else "FAIL",
                     f"within 2x the error bound; {100 * (got == want).float().mean():.1f}% bit-identical"])
    details = [table(["format", "operands", "result", "detail"], rows)]

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 baseline is FP32
    try:
        timing = []
        lengths = (32,) if run.dry else (512, 1024, 2048, 4096)
        shapes = [(f"q·kᵀ (1,{heads},{t},64)", heads, t, 64, t) for t in lengths]
        shapes += [] if run.dry else [("GPT-2 x·Wᵀ 1024x768 · 768x3072", 1, 1024, 768, 3072),
                                      ("SmolLM2 x·Wᵀ 1024x576 · 576x1536", 1, 1024, 576, 1536)]
        for label, batch, m, k, n in shapes:
            row = [label]
            try:
                a, b = torch.randn(batch, m, k, device=dev), torch.randn(batch, k, n, device=dev)
                fp32 = run.median_ms(lambda: torch.matmul(a, b))
                row.append(f"{fp32:.3f}")
                for block_k in (1, 32):
                    warm = run.first_call_s(lambda: triton_lp_matmul(a, b, "m4", block_k))
                    ms = run.median_ms(lambda: triton_lp_matmul(a, b, "m4", block_k))
                    row += [f"{ms:.3f}", f"{ms / fp32:.1f}x", f"{warm:.1f}"]
            except Exception as err:  # noqa: BLE001 (one shape failing, e.g. out of memory, leaves the others)
                row.append(failure(err))
            timing.append(row + [""] * (8 - len(row)))
        details.append(table(["shape", "FP32 ms", "strict m4 ms", "/FP32", "first call s", "blocked(32) m4 ms",
                              "/FP32", "first call s"], timing))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    summary = f"{sum(r[2] == 'pass' for r in rows)}/{len(rows)} bit-exact checks pass"
    if len(timing):
        summary += f"; strict m4 at the largest attention shape {timing[len(lengths) - 1][3]} FP32"
    return ok, summary, "\n\n".join(details)


def site_arguments(run: Run, fused: bool, fmt: str = "m4"):
    from lampc.policy import SitePolicy

    texts = SitePolicy(format=fmt, criterion="strict", tau=0.1, fused=fused).config.texts
    t = 24 if run.dry else 512
    g = torch.Generator().manual_seed(2)
    q, k_t = torch.randn(1, 4, t, 64, generator=g) * 2, torch.randn(1, 4, 64, t, generator=g) * 2
    causal = torch.ones(t, t, dtype=torch.bool).triu(1)
    mask = torch.zeros(1, 1, t, t).masked_fill(causal, torch.finfo(torch.float32).min)
    return (q, k_t, 0.125, mask, False, texts.producer, texts.rule, texts.facts, texts.execution, 0)


def register_site(run: Run) -> bool:
    """lampc::lamp_scores's device kernel: register_cuda() on CUDA; in a CPU dry run the same function as the CPU
    kernel (under the interpreter), so a compiled model on the CPU goes through it too."""
    from lampc.ops import cuda_site

    if run.cuda:
        return cuda_site.register_cuda()
    torch.library.register_kernel(cuda_site.OP_NAME, "cpu", cuda_site.lamp_scores_cuda)
    return True


def section_site(run: Run):
    from lampc.ops.fused_site import lamp_scores

    registered = register_site(run)
    if not registered:
        return False, "register_cuda() returned False (no triton?)", ""
    args = site_arguments(run, fused=False)
    on_dev = tuple(x.to(run.device) if isinstance(x, torch.Tensor) else x for x in args)
    got, got_sel = torch.ops.lampc.lamp_scores(*on_dev)
    with lamp_scores.set_kernel_enabled(run.device.type, False):  # the op's default implementation on the CPU
        want, want_sel = torch.ops.lampc.lamp_scores(*args)
        default_ms = run.median_ms(lambda: torch.ops.lampc.lamp_scores(*on_dev)) if run.cuda else float("nan")
    got, got_sel = got.cpu(), got_sel.cpu()
    same_selection = torch.equal(got_sel, want_sel)
    unselected, how = same_bits(got[~want_sel], want[~want_sel])
    q, k_t = args[0], args[1]
    n = q.shape[-1] + 1  # two FP32 sums in different orders and the scaling: 2 γ_{K+1}(u32) |scale| Σ|q k|
    bound = 2 * (n * 2.0**-24 / (1 - n * 2.0**-24)) * args[2] * torch.matmul(q.abs(), k_t.abs())
    recomputed_ok = bool(((got - want).abs()[want_sel] <= bound.expand(want.shape)[want_sel]).all())
    kernel_ms = run.median_ms(lambda: torch.ops.lampc.lamp_scores(*on_dev))
    ok = same_selection and unselected and recomputed_ok
    rows = [["selection equal", same_selection, f"rate {100 * want_sel.float().mean():.2f}%"],
            ["ŝ where nothing is recomputed", unselected, how],
            ["recomputed entries within FP32 summation bound", recomputed_ok, ""],
            ["time: CUDA kernel / op default on the device (ms)", "", f"{kernel_ms:.3f} / {default_ms:.3f}"]]
    return ok, f"selection equal: {same_selection}, ŝ bits: {unselected}; {kernel_ms:.2f} ms vs default " \
               f"{default_ms:.2f} ms", table(["check", "result", "detail"], rows)


def section_tests(run: Run):
    if run.dry:
        return None, "not in a dry run (CI runs the file under the interpreter)", ""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_triton_kernels.py"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=run.args.tests_timeout)
    tail = done.stdout.strip().splitlines()[-25:]
    return done.returncode == 0, tail[-1] if tail else "no output", "```\n" + "\n".join(tail) + "\n```"


def model_inputs(run: Run, tokenizer, batch: int, length: int):
    from lampc.models.load import EMBEDDED_DIR

    need = batch * length
    text = (EMBEDDED_DIR / "persuasion_slice.txt").read_text(encoding="utf-8")[: 8 * need]  # ~4 characters a token
    ids = torch.tensor(tokenizer(text)["input_ids"])
    ids = ids.repeat(math.ceil(need / ids.numel()))[:need]
    return ids.reshape(batch, length)


def logits_kl(ref: torch.Tensor, test: torch.Tensor) -> float:
    p = torch.log_softmax(ref.double(), -1)
    return float((p.exp() * (p - torch.log_softmax(test.double(), -1))).sum(-1).mean())


def failure(err: Exception) -> str:
    return f"FAILED: {type(err).__name__}: {err}"[:160].replace("|", "/").replace("\n", " ")


def section_model(run: Run):
    import lampc
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    length = 16 if run.dry else 256
    ids = model_inputs(run, tokenizer, 1, length)
    repeats, new = run.args.repeats, 2 if run.dry else 32
    prompt = ids[:, : length // 2]
    register_site(run)
    rows, ok, errors = [], True, []
    fp32 = copy.deepcopy(model).to(run.device)
    with torch.no_grad():
        fp32_ms = run.median_ms(lambda: fp32(ids.to(run.device)).logits)
    rows.append(["FP32 (HF model on the device)", "", "", f"{fp32_ms:.2f}", "", ""])
    for label, fused in (("m4 strict tau 0.1, fused (Triton site)", True), ("m4 strict tau 0.1, unfused", False)):
        compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1, fused=fused, steps="eager")
        with torch.no_grad():
            cpu_logits = compiled(ids).logits
            cpu_tokens = compiled.generate(prompt, max_new_tokens=new)
        compiled.to(run.device)
        dev_ids, dev_prompt = ids.to(run.device), prompt.to(run.device)
        row = [label]
        with torch.no_grad():
            try:  # prefill: one full-sequence forward
                warm = run.first_call_s(lambda: compiled(dev_ids).logits)
                logits = compiled(dev_ids).logits.cpu()
                prefill_ms = run.median_ms(lambda: compiled(dev_ids).logits)
                kl = logits_kl(cpu_logits, logits)
                agree = float((cpu_logits.argmax(-1) == logits.argmax(-1)).float().mean())
                ok &= kl < 1e-3 and agree > 0.98
                row += [f"{kl:.2e}", f"{100 * agree:.1f}%",
                        f"{prefill_ms:.2f} ({prefill_ms / fp32_ms:.1f}x; first call {warm:.1f} s)"]
            except Exception as err:  # noqa: BLE001 (decode still runs; the report says what failed)
                ok = False
                errors.append(f"{label}, prefill:\n{traceback.format_exc()[-2000:]}")
                row += [failure(err), "", ""]
            try:  # decode: generate with the KV cache (the step graphs)
                tokens = compiled.generate(dev_prompt, max_new_tokens=new).cpu()
                gen_ms = run.median_ms(lambda: compiled.generate(dev_prompt, max_new_tokens=new), min(3, repeats))
                one_ms = run.median_ms(lambda: compiled.generate(dev_prompt, max_new_tokens=1), min(3, repeats))
                produced = tokens.shape[1] - prompt.shape[1]
                same = int((tokens[0, prompt.shape[1]:] == cpu_tokens[0, prompt.shape[1]:]).cumprod(0).sum())
                row += [f"{(gen_ms - one_ms) / max(produced - 1, 1):.2f}", f"{same}/{produced}"]
            except Exception as err:  # noqa: BLE001
                ok = False
                errors.append(f"{label}, decode:\n{traceback.format_exc()[-2000:]}")
                row += [failure(err), ""]
        row[-1] += f" (rate {100 * compiled.stats()['overall']['rate']:.2f}%)"
        rows.append(row)
    header = ["variant", "KL(CPU ‖ device)", "argmax agree", f"prefill 1x{length} ms (x FP32)", "decode ms/token",
              "greedy tokens = CPU's before the first difference"]
    details = table(header, rows) + "".join(f"\n\n```\n{e}\n```" for e in errors)
    return ok, f"KL vs CPU {rows[1][1]} (fused), {rows[2][1]} (unfused); decode ms/token {rows[1][4]} / {rows[2][4]}", \
        details


def section_onnx(run: Run):
    import numpy as np

    import lampc
    from lampc.export import export_onnx, make_session
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    length = 32 if run.dry else 256
    ids = model_inputs(run, tokenizer, 1, length)
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1, steps="none")
    with torch.no_grad():
        want = compiled(ids).logits.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "embedded-m4.onnx")
        t0 = time.perf_counter()
        export_onnx(compiled, path)
        export_s = time.perf_counter() - t0
        rows, ok = [], True
        providers = [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]
        for wanted in providers if run.cuda else providers[1:]:
            try:
                session = make_session(path, providers=wanted)
            except Exception as err:  # noqa: BLE001 (a provider that does not load is a finding)
                ok = False
                rows.append([wanted[0], "failed to load", f"{type(err).__name__}: {err}"[:200], "", ""])
                continue
            used = session.get_providers()[0]
            got = session(ids.numpy())["logits"]
            diff = float(np.abs(got - want).max())
            agree = float((got.argmax(-1) == want.argmax(-1)).mean())
            t_ms = run.median_ms(lambda: session(ids.numpy()), repeats=run.args.repeats)
            passed = used == wanted[0] and agree > 0.98
            ok &= passed
            rows.append([wanted[0], used, f"{diff:.2e}", f"{100 * agree:.1f}%", f"{t_ms:.2f}"])
    header = ["asked for", "provider used", "max abs(logits - PyTorch)", "argmax agree", f"1x{length} ms"]
    return ok, f"export {export_s:.1f} s; " + "; ".join(f"{r[0]}: {r[1]}" for r in rows), table(header, rows)


def section_native(run: Run):
    import lampc
    from lampc import Policy, SitePolicy
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    batch, length = (1, 32) if run.dry else (4, 256)
    ids = model_inputs(run, tokenizer, batch, length).to(run.device)
    bf16 = dict(format="bf16", backend="native", fused=True)
    policies = {"lampc uniform bf16": Policy(attention=SitePolicy(criterion="uniform", **bf16), sites="all"),
                "LAMP bf16 (attention 1, logits 0.01)": Policy(
                    attention=SitePolicy(criterion="strict", tau=1.0, **bf16),
                    logits=SitePolicy(criterion="strict", tau=0.01, **bf16), sites="all")}
    fp32 = copy.deepcopy(model).to(run.device)
    cast = copy.deepcopy(model).to(run.device, torch.bfloat16)

    def autocast(x):
        with torch.autocast(run.device.type, dtype=torch.bfloat16):
            return fp32(x).logits.float()

    fns = {"FP32": lambda x: fp32(x).logits, "model.to(bfloat16)": lambda x: cast(x).logits.float(),
           "torch.autocast bf16": autocast}
    for name, policy in policies.items():
        compiled = lampc.compile(model, policy, steps="none").to(run.device)
        compiled.record_stats(False)
        fns[name] = (lambda c: (lambda x: c(x).logits))(compiled)
    rows = []
    with torch.no_grad():
        ref = fns["FP32"](ids).float().cpu()
        fp32_ms = None
        for name, fn in fns.items():
            try:
                warm = run.first_call_s(lambda: fn(ids))
                ms = run.median_ms(lambda: fn(ids))
                fp32_ms = fp32_ms or ms
                kl = logits_kl(ref, fn(ids).float().cpu())
                rows.append([name, f"{ms:.2f}", f"{fp32_ms / ms:.2f}x", f"{kl:.2e}", f"{warm:.1f}"])
            except Exception as err:  # noqa: BLE001 (the other variants still run)
                rows.append([name, failure(err), "", "", ""])
    header = ["variant", f"{batch}x{length} ms", "speed-up over FP32", "KL vs FP32", "first call s"]
    lamp = rows[-1]
    ok = all(not r[1].startswith("FAILED") for r in rows)
    return ok, f"LAMP bf16 {lamp[2]} FP32's speed, KL {lamp[3]}", table(header, rows)


RUNNERS = {"env": section_env, "producer": section_producer, "site": section_site, "tests": section_tests,
           "model": section_model, "onnx": section_onnx, "native": section_native}


# -- report ---------------------------------------------------------------------------------------------------------


def write_report(run: Run, path: Path) -> None:
    status = {True: "pass", False: "FAIL", None: "skipped"}
    if not run.dry:
        where = f"device {run.device}"
    else:
        where = "a DRY RUN (tiny shapes" + (")" if run.cuda else ", the Triton interpreter on the CPU)")
    command = " ".join(["python bench/gpu.py", *sys.argv[1:]])
    lines = ["# lampc on a GPU: the CUDA paths end to end", "",
             f"`{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}, {where}; "
             f"{time.perf_counter() - run.start:.0f} s so far.", "", *[f"- {h}" for h in run.header], "",
             table(["section", "result", "seconds", "summary"],
                   [[r["name"], status[r["ok"]], f"{r['seconds']:.1f}", r["summary"].replace("|", "/")]
                    for r in run.results]), ""]
    for r in run.results:
        lines += [f"## {r['name']}", "", r["details"] or "(no details)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run under TRITON_INTERPRET=1)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, one repeat (implied by --device cpu)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds: later sections are skipped past it")
    parser.add_argument("--tests-timeout", type=float, default=240.0)
    parser.add_argument("--out", default=None, help="the report (default bench/gpu.md; a dry run: a temp file)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: torch sees no CUDA device (torch.cuda.is_available() is False); --device cpu for a dry run",
              file=sys.stderr)
    run = Run(args)
    if run.dry:
        args.repeats = 1
    out = Path(args.out) if args.out else (REPO / "bench" / "gpu.md" if not run.dry else
                                           Path(tempfile.gettempdir()) / "lampc-gpu-dry-run.md")
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        started = time.perf_counter()
        if started - run.start > args.budget:
            ok, summary, details = None, f"skipped: past the {args.budget:.0f} s budget", ""
        else:
            print(f"gpu.py: {name} ...", flush=True)
            try:
                ok, summary, details = RUNNERS[name](run)
            except Exception as err:  # noqa: BLE001 (each section reports its own failure; the others still run)
                ok, summary = False, f"{type(err).__name__}: {err}"[:300]
                details = "```\n" + traceback.format_exc()[-4000:] + "\n```"
        run.results.append(dict(name=name, ok=ok, seconds=time.perf_counter() - started, summary=summary,
                                details=details))
        print(f"gpu.py: {name}: {'pass' if ok else 'skipped' if ok is None else 'FAIL'} "
              f"({time.perf_counter() - started:.1f} s) {summary}", flush=True)
        write_report(run, out)
    print(f"gpu.py: wrote {out}")
    return 0 if all(r["ok"] is not False for r in run.results) else 1


if __name__ == "__main__":
    sys.exit(main())
