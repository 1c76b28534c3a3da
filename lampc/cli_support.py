"""What every `lampc` subcommand shares: the user-error class, --model, --out, the type of a policy field's option,
the checks that a destination can be written (before any work), and what third-party output a command shows.

Nothing here imports torch, transformers or ONNX: the command line builds its parsers from this module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path


class CliError(Exception):
    """A user error on the command line: printed as `lampc: error: ...`, exit status 2."""


def add_model_argument(parser) -> None:
    """--model, as every subcommand that loads a model spells it."""
    parser.add_argument("--model", default="embedded", help="'embedded' (default), a known name, or a model directory")


def add_out_argument(parser, *, dest: str = "out", required: bool = False, **options) -> None:
    """--out, as every command that writes spells it; --output is taken too (not shown in --help)."""
    group = parser.add_mutually_exclusive_group(required=required)  # either spelling meets `required`
    group.add_argument("--out", dest=dest, **options)
    group.add_argument("--output", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def field_arg(name: str, *, lower: bool = False):
    """The argparse type of the option for SitePolicy field `name`: its text read by lampc's one codec
    (lampc/config/codec.py), typed from the field's annotation (--tau 0.1, --block-k 8, --budget 8 or 0.05, "none"
    for an optional field); `lower`: a vocabulary word in lower case, for argparse's `choices`. A text that is no
    value of the field: argparse's error, naming the option and the field."""

    def read(text: str):
        from .config.codec import parse_field
        from .policy import SitePolicy

        try:
            value = parse_field(SitePolicy, name, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value.lower() if lower and isinstance(value, str) else value

    read.__name__ = name  # argparse names the type in some messages
    return read


def check_writable_file(path: str | Path, flag: str) -> Path:
    """`path` can be written as a file: no directory there, its directory exists, and a file can be made in it.
    Checked before any work (by making and removing a probe file beside it); an existing file is left as it is."""
    path = Path(path)
    parent = path.parent  # Path("out.csv").parent is Path(".")
    if path.is_dir():
        raise CliError(f"{flag}: {path} is a directory; give a file name")
    if not parent.is_dir():
        raise CliError(f"{flag}: cannot write {path}: directory {parent} does not exist")
    probe = parent / f".{path.name}.lampc-write-check"
    try:
        with open(path if path.exists() else probe, "a"):
            pass
    except OSError as err:
        raise CliError(f"{flag}: cannot write {path} ({err.strerror or err})") from None
    finally:
        if probe.exists():
            probe.unlink()
    return path


KNOWN_WARNINGS = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # torch 2.13, when ONNX export copies a graph
)
"""Third-party warnings a command hides by default (category, message regex): ones a user cannot act on. Any other
warning, lampc's own included, still shows."""

LAMPC_WARNINGS = r"lampc\b|lp_matmul:|generate:"
"""How lampc's own warnings start (a regex for warnings.filterwarnings): --quiet keeps these."""

PROGRESS_BAR_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": ("huggingface_hub.constants", "huggingface_hub.utils.tqdm"),
    "HF_DATASETS_DISABLE_PROGRESS_BARS": ("datasets.config", "datasets.utils.tqdm"),
}
"""Each variable that turns a library's progress bars off -> the modules that copy it into a same-named global when
they are imported (the first one is where it is read, the last one holds enable_progress_bars)."""


@contextlib.contextmanager
def third_party_output(*, verbose: bool = False, quiet: bool = False):
    """What third-party libraries may print while a command runs; restored afterwards, whether transformers,
    huggingface_hub and datasets were loaded before the block or during it.

    default   no weight-loading or dataset progress bars, no KNOWN_WARNINGS; lampc's progress, other warnings and
              transformers' own warnings still show
    quiet     also no third-party warnings and no transformers or torch log below errors (lampc's results, errors
              and its own warnings, LAMPC_WARNINGS, still print)
    verbose   everything, as the libraries print it
    """
    if verbose:
        yield
        return
    env = {name: "1" for name in PROGRESS_BAR_ENV} | ({"TRANSFORMERS_VERBOSITY": "error"} if quiet else {})
    saved_env = {name: os.environ.get(name) for name in env}
    loaded_before = {name for modules in PROGRESS_BAR_ENV.values() for name in modules if name in sys.modules}
    os.environ.update(env)  # read when transformers and datasets load; if transformers is loaded, it is told below
    hf_before = _hf_state()
    if hf_before is not None:
        _set_hf_state(False, 40 if quiet else hf_before[1])  # 40: ERROR
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", message=LAMPC_WARNINGS)  # lampc's own warnings are results too
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        torch_logs = _torch_logs(40 if quiet else None)
        try:
            yield
        finally:
            _torch_logs(torch_logs)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _restore_progress_bar_globals(saved_env, loaded_before)
            if hf_before is not None:
                _set_hf_state(*hf_before)
            elif "transformers.utils.logging" in sys.modules:  # loaded during the block, from the block's env
                _restore_hf_loaded_inside()


def _restore_progress_bar_globals(saved_env: dict, loaded_before: set) -> None:
    """The progress-bar globals of modules first imported inside the block set to what the environment outside it
    says (as the module would have read it at import)."""
    for name, modules in PROGRESS_BAR_ENV.items():
        if modules[0] in loaded_before or modules[-1] not in sys.modules:
            continue
        text = saved_env.get(name)
        value = None if text is None else text.upper() in ("1", "ON", "YES", "TRUE")
        for module in modules:
            setattr(sys.modules[module], name, value)
        if value is not True:
            sys.modules[modules[-1]].enable_progress_bars()


def _restore_hf_loaded_inside() -> None:
    """transformers imported inside the block: its verbosity and progress bar as the outside environment sets them."""
    hf = sys.modules["transformers.utils.logging"]
    hf.set_verbosity(hf._get_default_logging_level())  # reads TRANSFORMERS_VERBOSITY, restored by now
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is None or not hub.are_progress_bars_disabled():
        hf.enable_progress_bar()


def _hf_state() -> tuple[bool, int] | None:
    """(progress bars on, verbosity) of transformers' logging when transformers is loaded, else None."""
    hf = sys.modules.get("transformers.utils.logging")
    return None if hf is None else (hf.is_progress_bar_enabled(), hf.get_verbosity())


def _set_hf_state(bars: bool, verbosity: int) -> None:
    hf = sys.modules["transformers.utils.logging"]
    if bars:
        hf.enable_progress_bar()
    else:
        hf.disable_progress_bar()
    hf.set_verbosity(verbosity)


def _torch_logs(level: int | None) -> int | None:
    """Set the "torch" logger's level (None: leave it); returns the level it had, for restoring."""
    if level is None:
        return None
    import logging

    logger = logging.getLogger("torch")
    before = logger.level
    logger.setLevel(level)
    return before
