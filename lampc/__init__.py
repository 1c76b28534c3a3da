"""lampc: look-ahead mixed-precision (LAMP) inference for transformers, as a torch.fx compiler pass.

    import lampc
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    logits = compiled(input_ids).logits
    lampc.show(compiled)
    compiled.stats()
"""

from .version import __version__
from . import formats, inspect  # noqa: E402
from .api import NoSitesError, compile  # noqa: E402
from .capture import CaptureError  # noqa: E402
from .inspect import show  # noqa: E402
from .policy import Policy, SitePolicy  # noqa: E402

__all__ = ["CaptureError", "NoSitesError", "Policy", "SitePolicy", "compile", "export_onnx", "load_model", "formats", "inspect", "show",
           "__version__"]


def __getattr__(name):
    """`lampc.export_onnx` loads the ONNX stack (onnxscript, onnxruntime) only when first used; `lampc.load_model`
    the model loaders (transformers' Auto classes)."""
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "export_onnx":
        from .export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'lampc' has no attribute {name!r}")
