"""lampc: look-ahead mixed-precision (LAMP) inference for transformers, as a torch.fx compiler pass.

    import lampc
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    logits = compiled(input_ids).logits
    lampc.show(compiled)
    compiled.stats()

The names below load their modules when first used, so that `import lampc` (and `lampc --help`, which imports the
command line through it) costs no torch, transformers or ONNX import; `lampc.compile` loads torch.
"""

from __future__ import annotations

import importlib

from .version import __version__

LAZY = {
    "compile": ("lampc.api", "compile"),
    "NoSitesError": ("lampc.api", "NoSitesError"),
    "CaptureError": ("lampc.capture", "CaptureError"),
    "Policy": ("lampc.policy", "Policy"),
    "SitePolicy": ("lampc.policy", "SitePolicy"),
    "show": ("lampc.inspect.show", "show"),
    "load_model": ("lampc.models", "load_model"),
    "export_onnx": ("lampc.export", "export_onnx"),
    "formats": ("lampc.formats", None),
    "inspect": ("lampc.inspect", None),
}
"""name -> (module, attribute; None: the module itself)."""

__all__ = ["CaptureError", "NoSitesError", "Policy", "SitePolicy", "compile", "export_onnx", "load_model", "formats",
           "inspect", "show", "__version__"]


def __getattr__(name: str):
    if name not in LAZY:
        raise AttributeError(f"module 'lampc' has no attribute {name!r}")
    module_name, attribute = LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(LAZY))
