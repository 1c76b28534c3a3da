"""The passkey documents (lampc/tasks/passkey.py) as lm-eval's task `austen_passkey`: generation, scored right or
wrong per document (acc), so `compare` pairs each cell with FP32 document by document.

    lampc tasks --tasks austen_passkey_1024_depth25 ...      # 1024-token prompts, the key a quarter of the way in
    compare("embedded", cells, [passkey_task(length=256, depth=0.5, count=50)])

Task names: `austen_passkey[_<length>][_depth<percent>][_seed<n>][_digits<n>]`; a part left out takes passkey.py's
default (256 tokens, depth 0.5, seed 0, five digits; 100 documents, fewer with --limit). Not `passkey`: lm-eval's
registry has a task of that name (LIBRA's). The documents depend on the model's
tokenizer, so they are made when lm-eval builds the task (its `custom_dataset`, as its RULER tasks do), from the
task's metadata: `model` (a lampc model name or directory, as LampcLM's model_args name it; default embedded) and
the parameters. `compare` sets `model` to the model it runs and lends it the tokenizer it loaded. From lm-eval's
own command line the model comes with --model_args and the parameters with --metadata:

    lampc-lm-eval --model lampc --model_args model=embedded --tasks austen_passkey --metadata '{"length": 128}'

A length the model cannot read with its answer (its position table minus ANSWER_TOKENS) is refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from .passkey import ANSWER_TOKENS, DEFAULTS, answer_is_right, check_parameters, passkey_documents
from .path import TASK_DIR

PASSKEY_TASK = "austen_passkey"
PARAMETERS = ("length", "depth", "count", "seed", "digits")
NAME = re.compile(rf"{PASSKEY_TASK}(?:_(?P<length>\d+))?(?:_depth(?P<depth>\d+))?(?:_seed(?P<seed>\d+))?"
                  r"(?:_digits(?P<digits>\d+))?")
FORMS = f"{PASSKEY_TASK}[_<length>][_depth<percent>][_seed<n>][_digits<n>]"

_TOKENIZERS: dict[str, tuple[object, int]] = {}
"""model name -> (tokenizer, the tokens it reads): what `lend_tokenizer` lent, or what `tokenizer_for` loaded."""


def is_passkey_name(name: str) -> bool:
    return name == PASSKEY_TASK or name.startswith(PASSKEY_TASK + "_")


def passkey_task(name: str | None = None, **parameters) -> dict:
    """lm-eval's config of the task (austen/passkey.yaml, read as lm-eval reads it), named `name` (default: the
    name the parameters spell), with the parameters in its metadata. ValueError for a bad parameter."""
    from lm_eval.tasks._yaml_loader import load_yaml

    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"passkey: unknown parameter(s) {unknown}; it takes {', '.join(PARAMETERS)}")
    check_parameters(**{**DEFAULTS, **parameters})
    config = load_yaml(TASK_DIR / "passkey.yaml", resolve_func=True)
    config["task"] = name or _name(parameters)
    config["metadata"] = {**config.get("metadata", {}), **parameters}
    return config


def passkey_task_named(name: str) -> dict:
    """The config of a task name such as austen_passkey_1024_depth25; ValueError naming the forms it takes."""
    found = NAME.fullmatch(name)
    if not found:
        raise ValueError(f"task {name!r}: passkey tasks are named {FORMS} (e.g. {PASSKEY_TASK}_1024_depth25)")
    parameters = {k: int(v) for k, v in found.groupdict().items() if v is not None}
    if "depth" in parameters:
        parameters["depth"] /= 100
    return passkey_task(name, **parameters)


def dataset(**metadata) -> dict:
    """lm-eval's `custom_dataset`: {"test": the documents} for the task's metadata (its own, lm-eval's
    --model_args and --metadata; other keys are ignored). ValueError for a bad parameter, or a length the model
    cannot read with its answer."""
    import datasets

    if "model" not in metadata and any(k in metadata for k in ("pretrained", "tokenizer")):
        raise ValueError(f"{PASSKEY_TASK} makes its documents with a lampc model's tokenizer: run it with --model "
                         "lampc --model_args model=<embedded, smollm2-135m or a model directory>")
    model = str(metadata.get("model") or "embedded")
    parameters = {**DEFAULTS, **{k: metadata[k] for k in PARAMETERS if k in metadata}}
    check_parameters(**parameters)
    tokenizer, context = tokenizer_for(model)
    check_fits(parameters["length"], model, context)
    return {"test": datasets.Dataset.from_list(passkey_documents(tokenizer, **parameters))}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval's per-document score: acc 1.0 when the generated answer's first digits are the key."""
    return {"acc": float(answer_is_right(results[0], doc["key"]))}


def for_model(tasks: list, model: str, loaded) -> list:
    """The tasks, with each passkey config's metadata naming `model`, whose tokenizer (of `loaded`, the (model,
    tokenizer) compare runs) it lends for the documents. ValueError, before any model runs, for a length the model
    cannot read with its answer."""
    out = []
    for task in tasks:
        if isinstance(task, dict) and task.get("custom_dataset") is dataset:
            context = context_of(loaded[0].config)
            lend_tokenizer(model, loaded[1], context)
            task = {**task, "metadata": {**task.get("metadata", {}), "model": model}}
            check_fits(task["metadata"].get("length", DEFAULTS["length"]), model, context)
        out.append(task)
    return out


def check_fits(length: int, model: str, context: int) -> None:
    """ValueError unless a prompt of `length` tokens and its answer fit the model's `context` (LampcLM would cut the
    prompt's start, the intro and perhaps the needle, to make them fit)."""
    if length + ANSWER_TOKENS > context:
        raise ValueError(f"passkey length: the model {model} reads at most {context} tokens, so a prompt takes at "
                         f"most {context - ANSWER_TOKENS} (its answer up to {ANSWER_TOKENS} more); got {length}")


def lend_tokenizer(model: str, tokenizer, context: int) -> None:
    _TOKENIZERS[model] = (tokenizer, context)


def tokenizer_for(model: str) -> tuple[object, int]:
    """(tokenizer, the tokens the model reads) of a lampc model name or directory: lent by `for_model`, else read
    from the model's directory (the embedded model's, or the one given), else loaded with the model."""
    if model not in _TOKENIZERS:
        from transformers import AutoConfig, AutoTokenizer

        from ..models.load import EMBEDDED_DIR, MODELS, load_model

        directory = EMBEDDED_DIR if model == "embedded" else None if model in MODELS else Path(model).expanduser()
        if directory is not None and directory.is_dir():
            config = AutoConfig.from_pretrained(directory, local_files_only=True)
            _TOKENIZERS[model] = (AutoTokenizer.from_pretrained(directory, local_files_only=True), context_of(config))
        else:
            loaded = load_model(model)
            _TOKENIZERS[model] = (loaded[1], context_of(loaded[0].config))
    return _TOKENIZERS[model]


def context_of(config) -> int:
    """The tokens a model reads, as LampcLM counts them (its position table; 1024 where the config names none)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


def _name(parameters: dict) -> str:
    name = PASSKEY_TASK
    if "length" in parameters:
        name += f"_{parameters['length']}"
    if "depth" in parameters:
        percent = 100 * parameters["depth"]
        name += f"_depth{round(percent)}" if abs(percent - round(percent)) < 1e-9 else f"_depth{percent:g}"
    for key in ("seed", "digits"):
        if key in parameters:
            name += f"_{key}{parameters[key]}"
    return name
