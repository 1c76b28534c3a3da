"""Build lampc's C kernels once per machine and keep the shared library in a cache.

The kernel sources ship with lampc (every `*.c` file in this folder, linked into one library); the first call on a machine compiles it with the system C
compiler (about a second with gcc) for the CPU it runs on (`-march=native`), under a name that hashes the source,
the flags, the compiler's version and the CPU's feature flags, so a changed kernel, compiler or CPU (a home
directory shared between machines) never loads a stale build. Concurrent builds (pytest workers) write to temporary
names and rename: the last rename wins with identical bytes.

    $LAMPC_KERNEL_CACHE  where builds go (default: $XDG_CACHE_HOME/lampc/kernels, else ~/.cache/lampc/kernels)
    $CC                  the compiler (default: cc, then gcc)
    $LAMPC_KERNELS=0     use no C kernel: every fast path runs its readable reference (lp_matmul warns once)

Numerics depend on two flags: `-ffp-contract=off` (a product and a sum stay two roundings, never an FMA) and the
absence of `-ffast-math`. `-march=native` only chooses the vector width.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = tuple(sorted(Path(__file__).parent.glob("*.c")))
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-std=gnu11", "-shared", "-fPIC")


class KernelUnavailable(RuntimeError):
    """The C kernel cannot be built or loaded here; the message says why."""


@functools.cache
def load() -> ctypes.CDLL:
    """The built kernel library (building it on first use). Raises KernelUnavailable with the reason."""
    if os.environ.get("LAMPC_KERNELS", "1") == "0":
        raise KernelUnavailable("turned off by LAMPC_KERNELS=0")
    compiler, *compiler_flags = _compiler()
    flags = (*compiler_flags, *FLAGS)
    source = b"\0".join(path.name.encode() + b"\0" + path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(
        b"\0".join([source, " ".join(flags).encode(), _compiler_version(compiler).encode(), _cpu_flags().encode()])
    ).hexdigest()[:16]
    target = cache_dir() / f"lampc-kernels-{key}.so"
    if not target.exists():
        _build(compiler, flags, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError:  # a truncated or foreign file under the right name: build it again, once
        _build(compiler, flags, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as err:
        raise KernelUnavailable(f"the built kernel {target} does not load: {err}") from err


def cache_dir() -> Path:
    """Where built kernels are kept ($LAMPC_KERNEL_CACHE, else the user's cache directory)."""
    if os.environ.get("LAMPC_KERNEL_CACHE"):
        return Path(os.environ["LAMPC_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lampc" / "kernels"


def _compiler() -> list[str]:
    """[compiler, its own flags...]: $CC split like a shell word list ("ccache gcc", "gcc -m64"), else cc or gcc."""
    if os.environ.get("CC"):
        words = shlex.split(os.environ["CC"])
        path = shutil.which(words[0]) if words else None
        if path is None:
            raise KernelUnavailable(f"$CC={os.environ['CC']!r} names no program on PATH")
        return [path, *words[1:]]
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return [path]
    raise KernelUnavailable("no C compiler found (set $CC, or install gcc)")


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f"the C compiler {compiler} does not run: {err}") from err


def _cpu_flags() -> str:
    """The CPU's feature flags (what -march=native reads), so one cache serves several machines correctly."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
    except OSError as err:
        raise KernelUnavailable(f"the kernel cache {target.parent} is not writable: {err}") from err
    try:
        done = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", scratch], capture_output=True,
                              text=True, timeout=300)
        names = ", ".join(path.name for path in SOURCES)
        if done.returncode != 0:
            raise KernelUnavailable(f"{compiler} failed to build {names}: {done.stderr.strip()[-2000:]}")
        os.replace(scratch, target)
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f"building lampc's C kernels with {compiler} failed: {err}") from err
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
