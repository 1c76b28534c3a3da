"""The JSON report of a compiled model: policy, sites, skips, statistics and versions."""

from __future__ import annotations

import platform


def versions() -> dict:
    import onnx
    import torch
    import transformers

    from ..version import __version__

    return {"lampc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "python": platform.python_version()}


def build_report(compiled) -> dict:
    sites = [s.to_dict() for s in compiled.sites]
    report = {
        "model_type": compiled.model_type,
        "policy": compiled.policy.to_dict(),
        "n_sites": len(sites),
        "sites": sites,
        "skips": [s.to_dict() for s in compiled.skips],
        "stats": compiled.stats(),
        "versions": versions(),
    }
    steps = compiled.step_graphs
    if steps is not None and steps.results:  # the cached-step graphs built so far (generate, cached forward)
        report["steps"] = {kind: {"n_sites": len(result.sites), "skips": [s.to_dict() for s in result.skips]}
                           for kind, result in steps.results.items()}
    if not sites:
        report["note"] = "no sites found: the model runs entirely in FP32 (see skips for the candidates left alone)"
    return report
