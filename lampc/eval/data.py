"""Text data for lampc's accuracy protocol: Jane Austen's six novels, and token windows cut from them.

The novels come from Debian's package `r-cran-janeaustenr` (MIT; the novels themselves are public domain).
The package stores them as an R lazy-load database (`data/Rdata.rdb` + `Rdata.rdx`): the `.rdx` index maps each
novel to an (offset, length) slice of the `.rdb`, and each slice is a 4-byte big-endian length followed by a
zlib-compressed R serialization of a character vector (one element per line). `rdata` parses that serialization.

The first call extracts the novels into the cache directory (`$LAMPC_CACHE`, else `~/.cache/lampc`) as UTF-8
text files; later calls read those files only. Nothing is fetched at import time.

Paper protocol (docs/METHOD.md §5): natural text, and a token-shuffled variant of the same windows as a stress case.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

DEBIAN_PACKAGE = "r-cran-janeaustenr"
_PACKAGE_DATA = Path("usr/lib/R/site-library/janeaustenr/data")  # inside the .deb
INSTALLED_DATA = Path("/") / _PACKAGE_DATA  # where `apt-get install r-cran-janeaustenr` puts it

# R object name in the package -> title used by lampc (and by janeaustenr's own `austen_books()`).
NOVELS: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
HELD_OUT = "Persuasion"  # validation text: the embedded model's tokenizer and weights never saw it

_FETCH_HELP = (
    "lampc needs Jane Austen's novels from the Debian package r-cran-janeaustenr. Either install it "
    "(`apt-get update && apt-get install -y r-cran-janeaustenr`, as root) or make `apt-get download "
    "r-cran-janeaustenr` work, then call lampc.eval.data.austen_novels() again."
)


class DataError(RuntimeError):
    """The text data could not be obtained or read; the message says what to do."""


def cache_dir() -> Path:
    """`$LAMPC_CACHE` if set, else `~/.cache/lampc`. Not created here."""
    env = os.environ.get("LAMPC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lampc"


def _novel_path(root: Path, key: str) -> Path:
    return root / "austen" / f"{key}.txt"


def austen_novels(*, reflow: bool = True) -> dict[str, str]:
    """The six novels as {title: text}, in publication order.

    The package holds the Project Gutenberg layout: lines hard-wrapped near 70 columns, blank lines between
    paragraphs, two spaces after a full stop. With `reflow=True` (the default, and what the embedded model was
    trained on) each paragraph becomes one line, paragraphs are separated by one blank line, and runs of spaces
    become one space. `reflow=False` gives the lines exactly as packaged, joined by newlines.

    Cached under `cache_dir()/austen/` (as packaged) on first use; obtained from the Debian package when missing.
    """
    root = cache_dir()
    if not all(_novel_path(root, key).is_file() for key in NOVELS):
        _write_cache(root, _novels_from_debian())
    texts = {title: read_text(_novel_path(root, key)) for key, title in NOVELS.items()}
    return {title: reflow_paragraphs(t) for title, t in texts.items()} if reflow else texts


def persuasion_text(*, reflow: bool = True) -> str:
    """Persuasion, the held-out novel (validation text for the embedded model and the evaluation default)."""
    return austen_novels(reflow=reflow)[HELD_OUT]


def reflow_paragraphs(text: str) -> str:
    """Join hard-wrapped lines: one line per paragraph, one blank line between paragraphs, single spaces."""
    paragraphs = (" ".join(line.split()) for line in re.split(r"\n[ \t]*\n", text))
    return "\n\n".join(p for p in paragraphs if p) + "\n"


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a file, with a clear error when it is missing or not UTF-8."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not valid UTF-8 (byte {e.start}: {e.reason}); convert it to UTF-8 first") from e


def make_sequences(
    token_ids: Sequence[int] | torch.Tensor,
    seq_len: int,
    n_seq: int,
    seed: int,
    shuffle: bool = False,
) -> torch.Tensor:
    """`n_seq` non-overlapping windows of `seq_len` tokens, chosen with `seed`: a LongTensor (n_seq, seq_len).

    The text is cut into `len // seq_len` aligned windows after a seeded start offset (in the leftover tokens);
    `n_seq` of them are drawn without replacement and returned in text order. With `shuffle=True` the tokens of
    each window are permuted (seeded), the paper's nonsense-input stress case: same tokens, no syntax.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if seq_len < 1 or n_seq < 1:
        raise ValueError(f"seq_len and n_seq must be >= 1, got seq_len={seq_len}, n_seq={n_seq}")
    n_avail = ids.numel() // seq_len
    if n_seq > n_avail:
        raise ValueError(
            f"text too short: {n_seq} x {seq_len} = {n_seq * seq_len} tokens needed, {ids.numel()} available "
            f"(at most {n_avail} windows of {seq_len})"
        )
    g = torch.Generator().manual_seed(seed)
    slack = ids.numel() - n_avail * seq_len
    offset = int(torch.randint(slack + 1, (1,), generator=g))
    picked = torch.randperm(n_avail, generator=g)[:n_seq].sort().values
    starts = offset + picked * seq_len  # (n_seq,)
    seqs = ids[starts[:, None] + torch.arange(seq_len)]  # (n_seq, seq_len)
    if shuffle:
        perm = torch.stack([torch.randperm(seq_len, generator=g) for _ in range(n_seq)])  # (n_seq, seq_len)
        seqs = seqs.gather(1, perm)
    return seqs


# ---- obtaining the novels ------------------------------------------------------------------------------------


def _novels_from_debian() -> dict[str, str]:
    """{R object name: text}, from the installed package if present, else from a downloaded .deb."""
    if (INSTALLED_DATA / "Rdata.rdx").is_file():
        return _read_lazyload(INSTALLED_DATA)
    with tempfile.TemporaryDirectory(prefix="lampc-austen-") as tmp:
        deb = _download_deb(Path(tmp))
        out = Path(tmp) / "extracted"
        _run(["dpkg-deb", "-x", str(deb), str(out)], cwd=Path(tmp))
        return _read_lazyload(out / _PACKAGE_DATA)


def _download_deb(tmp: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError(f"apt-get and dpkg-deb are needed to fetch the novels and were not found. {_FETCH_HELP}")
    print(f"lampc: fetching Jane Austen's novels ({DEBIAN_PACKAGE}) with apt-get download, once; cached after",
          file=sys.stderr, flush=True)
    try:
        _run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp)
    except DataError:
        try:  # the package lists may be missing or stale: refresh them once (needs root)
            _run(["apt-get", "update"], cwd=tmp)
            _run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp)
        except DataError as e:
            raise DataError(f"could not download {DEBIAN_PACKAGE}: {e}\n{_FETCH_HELP}") from None
    debs = sorted(tmp.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise DataError(f"apt-get download left no {DEBIAN_PACKAGE}_*.deb in {tmp}. {_FETCH_HELP}")
    return debs[0]


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise DataError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {' | '.join(tail)}")


def _read_lazyload(data_dir: Path) -> dict[str, str]:
    """Decode an R lazy-load database (Rdata.rdx index + Rdata.rdb blobs) holding one character vector per novel."""
    import rdata  # only needed on first use

    index = rdata.read_rds(data_dir / "Rdata.rdx")["variables"]
    blob = (data_dir / "Rdata.rdb").read_bytes()
    novels = {}
    for key in NOVELS:
        if key not in index:
            raise DataError(f"{data_dir}: no novel named {key!r} in the package (found {sorted(index)})")
        off, length = (int(v) for v in index[key])
        chunk = blob[off : off + length]
        (n_raw,) = struct.unpack(">I", chunk[:4])  # uncompressed size, then zlib data
        raw = zlib.decompress(chunk[4:])
        if len(raw) != n_raw:
            raise DataError(f"{data_dir}: corrupt entry {key!r} ({len(raw)} bytes, expected {n_raw})")
        lines = rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))
        novels[key] = "\n".join(str(line) for line in lines) + "\n"
    return novels


def _write_cache(root: Path, novels: dict[str, str]) -> None:
    folder = root / "austen"
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in novels.items():
        final = _novel_path(root, key)
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, final)  # atomic: a concurrent reader sees the whole file or none
