"""lampc.eval.data: token windows, text reading, the novel cache, and fetching the novels from Debian."""

import os
import shutil
import stat
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
import rdata
import torch

import lampc
from lampc.eval import data
from lampc.eval.data import DataError, make_sequences, read_text

TOKENS = list(range(1000, 1000 + 103))  # distinct ids, so every token's position in the text is known


# ---- make_sequences ------------------------------------------------------------------------------------------


def test_shape_dtype_and_windows_come_from_the_text():
    seqs = make_sequences(TOKENS, seq_len=10, n_seq=4, seed=0)
    assert seqs.shape == (4, 10) and seqs.dtype == torch.long
    for row in seqs.tolist():  # each row is a contiguous stretch of the text
        start = TOKENS.index(row[0])
        assert row == TOKENS[start : start + 10]


def test_windows_do_not_overlap_and_are_in_text_order():
    seqs = make_sequences(TOKENS, seq_len=10, n_seq=10, seed=3)  # all 10 windows that fit in 103 tokens
    flat = seqs.flatten().tolist()
    assert len(set(flat)) == len(flat)
    assert [row[0] for row in seqs.tolist()] == sorted(row[0] for row in seqs.tolist())


def test_same_seed_same_windows_other_seed_other_windows():
    a = make_sequences(TOKENS, 8, 5, seed=42)
    assert torch.equal(a, make_sequences(TOKENS, 8, 5, seed=42))
    assert torch.equal(a, make_sequences(torch.tensor(TOKENS), 8, 5, seed=42))  # list or tensor input
    assert not all(torch.equal(a, make_sequences(TOKENS, 8, 5, seed=s)) for s in range(1, 4))


def test_shuffle_permutes_tokens_within_each_window():
    plain = make_sequences(TOKENS, 16, 5, seed=7)
    mixed = make_sequences(TOKENS, 16, 5, seed=7, shuffle=True)
    assert mixed.shape == plain.shape
    for p, m in zip(plain.tolist(), mixed.tolist()):
        assert Counter(p) == Counter(m)  # same multiset of tokens, row by row
    assert not torch.equal(plain, mixed)
    assert torch.equal(mixed, make_sequences(TOKENS, 16, 5, seed=7, shuffle=True))  # seeded


def test_shuffle_keeps_repeated_tokens():
    text = [1, 1, 1, 2, 2, 3] * 10
    for p, m in zip(make_sequences(text, 12, 5, 0).tolist(), make_sequences(text, 12, 5, 0, shuffle=True).tolist()):
        assert Counter(p) == Counter(m)


def test_too_short_text_says_how_many_tokens_there_are():
    assert make_sequences(TOKENS, seq_len=10, n_seq=10, seed=0).shape == (10, 10)  # exactly fits
    with pytest.raises(ValueError, match=r"120 tokens needed, 103 available"):
        make_sequences(TOKENS, seq_len=12, n_seq=10, seed=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        make_sequences(TOKENS, seq_len=0, n_seq=1, seed=0)


# ---- read_text -----------------------------------------------------------------------------------------------


def test_read_text_utf8(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("£ Anne Elliot\n", encoding="utf-8")
    assert read_text(f) == "£ Anne Elliot\n"


def test_read_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_text(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("£10".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_text(bad)


# ---- the novels: cache, reflow, fetch ------------------------------------------------------------------------


def test_reflow_joins_wrapped_lines():
    raw = "Chapter 1\n\n\nSir Walter was a man who,\nfor his own amusement,  never\n   took up any book.\n\n  \nEnd\n"
    assert data.reflow_paragraphs(raw) == (
        "Chapter 1\n\nSir Walter was a man who, for his own amusement, never took up any book.\n\nEnd\n"
    )


def test_novels_read_from_cache_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMPC_CACHE", str(tmp_path))
    (tmp_path / "austen").mkdir()
    for key in data.NOVELS:
        (tmp_path / "austen" / f"{key}.txt").write_text(f"{key} text,\nwrapped\n", encoding="utf-8")
    monkeypatch.setattr(data, "_novels_from_debian", lambda: pytest.fail("fetched although cached"))
    novels = data.austen_novels()
    assert list(novels) == list(data.NOVELS.values())
    assert novels["Persuasion"] == "persuasion text, wrapped\n"
    assert data.austen_novels(reflow=False)["Emma"] == "emma text,\nwrapped\n"
    assert data.persuasion_text() == "persuasion text, wrapped\n"


def write_lazyload(folder, novels: dict[str, list[str]]) -> None:
    """A small R lazy-load database laid out like r-cran-janeaustenr's data/ (Rdata.rdx index + Rdata.rdb)."""
    folder.mkdir(parents=True)
    blob, index = b"", {}
    for key, lines in novels.items():
        rdata.write_rds(folder / "one.rds", np.array(lines), compression=None)
        raw = (folder / "one.rds").read_bytes()
        entry = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[key] = np.array([len(blob), len(entry)], dtype=np.int32)
        blob += entry
    (folder / "one.rds").unlink()
    (folder / "Rdata.rdb").write_bytes(blob)
    rdata.write_rds(folder / "Rdata.rdx", {"variables": index, "references": {}, "compressed": np.array([True])})


def test_novels_decoded_from_installed_package_and_cached(tmp_path, monkeypatch):
    package = tmp_path / "site-library" / "janeaustenr" / "data"
    write_lazyload(package, {key: [f"{key} begins,", "  and £ goes on.", "", "The end."] for key in data.NOVELS})
    monkeypatch.setattr(data, "INSTALLED_DATA", package)
    monkeypatch.setenv("LAMPC_CACHE", str(tmp_path / "cache"))
    novels = data.austen_novels()
    assert novels["Emma"] == "emma begins, and £ goes on.\n\nThe end.\n"
    assert data.austen_novels(reflow=False)["Persuasion"] == "persuasion begins,\n  and £ goes on.\n\nThe end.\n"
    assert (tmp_path / "cache" / "austen" / "northangerabbey.txt").is_file()
    shutil.rmtree(package)  # now served from the cache alone
    assert data.austen_novels() == novels


def test_package_without_a_novel_is_an_error(tmp_path, monkeypatch):
    package = tmp_path / "data"
    write_lazyload(package, {"emma": ["Emma Woodhouse"]})
    monkeypatch.setattr(data, "INSTALLED_DATA", package)
    monkeypatch.setenv("LAMPC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no novel named 'sensesensibility'"):
        data.austen_novels()


def test_fetch_failure_tells_what_to_run(tmp_path, monkeypatch):
    """apt-get fails (here: a stand-in that always exits 100): the error names the package and the commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "dpkg-deb"):
        script = bin_dir / tool
        script.write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("LAMPC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "INSTALLED_DATA", tmp_path / "not-installed")
    with pytest.raises(DataError, match=r"(?s)r-cran-janeaustenr.*Unable to locate.*apt-get install -y r-cran"):
        data.austen_novels()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None, reason="needs Debian's apt-get and dpkg-deb"
)
def test_novels_from_debian_package(tmp_path, monkeypatch):
    """The real thing: download r-cran-janeaustenr (or read it if installed), decode the six novels, cache them."""
    monkeypatch.setenv("LAMPC_CACHE", str(tmp_path))
    novels = data.austen_novels()
    assert list(novels) == [
        "Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma", "Northanger Abbey", "Persuasion",
    ]
    for title, text in novels.items():
        assert 400_000 < len(text) < 1_000_000, title
        assert "\n\n" in text and "  " not in text
    assert novels["Persuasion"].startswith("Persuasion\n\nby\n\nJane Austen\n\n(1818)\n\nChapter 1\n\nSir Walter Elliot")
    assert "£" in novels["Mansfield Park"]  # non-ASCII survives the R strings and the UTF-8 cache
    assert sorted(os.listdir(tmp_path / "austen")) == sorted(f"{k}.txt" for k in data.NOVELS)
    fixture = read_text(os.path.join(os.path.dirname(lampc.__file__), "models", "embedded", "persuasion_slice.txt"))
    assert fixture in novels["Persuasion"]  # the embedded model's test slice is verbatim Persuasion
