"""`lampc export`: compile a model and write it as a standard ONNX model, then (by default) check it in ORT.

    lampc export --model embedded --format m4 --criterion strict --tau 0.1 --out model.onnx
"""

from __future__ import annotations

from ..cli_support import add_model_argument, add_out_argument
from ..cli_policy import add_policy_arguments, compile_arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a compiled model to ONNX (standard ops, runs in stock ONNX Runtime)",
        description="Compile a model with lampc and export it to ONNX in standard ops only: the low-precision "
                    "rounding, the look-ahead selection and the FP32 recompute become ordinary ONNX nodes, tagged "
                    "by site. The policy and lampc's version go into the model's metadata. Afterwards the model "
                    "is run once in ONNX Runtime next to the PyTorch compiled model and the difference printed.")
    add_model_argument(parser)
    add_policy_arguments(parser)  # --criterion random cannot be exported (it draws from torch's generator)
    add_out_argument(parser, required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=26, help="ONNX opset 18..26 (default 26: BitCast rounding)")
    parser.add_argument("--rounding", default="auto", type=str.lower, choices=("auto", "bits", "arith"),
                        help="rounding formulation (auto: bits at opset 26, else arith)")
    parser.add_argument("--no-optimize", action="store_true", help="skip onnxscript's graph optimiser")
    parser.add_argument("--debug-outputs", action="store_true", help="also output selection_<i> and scores_lp_<i>")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, third-party warnings or logs")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check after exporting")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..api import compile
    from ..cli_support import CliError
    from ..eval.progress import step_line
    from ..models import ModelNotFoundError, load_model
    from .describe import describe_onnx
    from .onnx import OnnxExportError, check_writable, export_onnx
    from .translations import EXPORTABLE_CRITERIA

    if args.criterion is not None and args.criterion not in EXPORTABLE_CRITERIA:  # fail before the slow part
        raise CliError(f"--criterion {args.criterion}: cannot be exported to ONNX (it draws from torch's random "
                       f"generator); exportable: {', '.join(EXPORTABLE_CRITERIA)}")
    try:
        check_writable(args.out)
    except OnnxExportError as err:
        raise CliError(f"--out: {err}") from None
    try:
        model, tokenizer = load_model(args.model)
    except ModelNotFoundError as err:
        raise CliError(f"--model: {err}") from None
    policy, overrides = compile_arguments(args)
    step_line(f"compiling {args.model} (torch.export capture, then the LAMP passes)", not args.quiet)
    compiled = compile(model, policy, **overrides)
    step_line(f"exporting to ONNX (opset {args.opset}) and optimising", not args.quiet)
    try:
        info = export_onnx(compiled, args.out, opset=args.opset, rounding=args.rounding,
                           optimize=not args.no_optimize, debug_outputs=args.debug_outputs)
    except OnnxExportError as err:
        raise CliError(str(err)) from None
    print(f"wrote {info.path} ({info.size_bytes / 1e6:.2f} MB, opset {info.opset}, rounding {info.rounding}, "
          f"{info.seconds:.1f} s)")
    print(describe_onnx(info.path))
    if not args.no_verify:
        print(_verify(compiled, tokenizer, info.path))
    return 0


def _verify(compiled, tokenizer, path: str) -> str:
    """One forward pass in ORT and in PyTorch on a short text: the largest logit difference."""
    import numpy as np
    import torch

    from .session import make_session, run_session

    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    ids = torch.tensor([tokenizer(text)["input_ids"][: compiled.max_len]])
    with torch.no_grad():
        want = compiled(ids).logits.numpy()
    got = run_session(make_session(path), ids, outputs=["logits"])["logits"]
    diff = float(np.abs(got - want).max())
    return f"ONNX Runtime vs PyTorch (compiled), {ids.shape[1]} tokens: max |logit difference| = {diff:.3g}"
