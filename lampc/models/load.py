"""Load a causal LM and its tokenizer for lampc: the embedded GPT-2 by name, or any local Hugging Face directory.

Nothing is downloaded: a name maps to a directory that is already on disk (the embedded model ships inside the
package). Other modules may add names to `MODELS` (e.g. a model that a pip package ships).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

# name -> function returning the model's local directory. Register more with `MODELS["name"] = fn`.
MODELS: dict[str, Callable[[], Path]] = {"embedded": lambda: EMBEDDED_DIR}


class ModelNotFoundError(LookupError):
    """The name is not registered and is not a directory holding a model."""


def model_dir(name_or_path: str | Path) -> Path:
    """The local directory for a registered name or a path; raises ModelNotFoundError with the known names."""
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        path = Path(MODELS[name_or_path]())
        where = f"model {name_or_path!r} ({path})"
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"unknown model {str(name_or_path)!r}: not a registered name ({', '.join(sorted(MODELS))}) "
                "and no such directory"
            )
        where = f"{path}"
    if not path.is_dir():
        raise ModelNotFoundError(f"{where}: not a directory")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{where}: no config.json, so no Hugging Face model to load there")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelNotFoundError(f"{where}: config.json but no weights (*.safetensors or *.bin)")
    return path


def load_model(
    name_or_path: str | Path = "embedded", *, attn_implementation: str = "eager"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a registered name or a local directory, offline: eval mode, FP32.

    Eager attention by default, so the scores go through explicit matmul/softmax ops that lampc can capture.
    """
    path = model_dir(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer
