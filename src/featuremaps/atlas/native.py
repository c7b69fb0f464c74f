"""The atlas's C kernel (``map_numbers.c``): compiled on first use, cached, called through :mod:`ctypes`.

The kernel reads each float32 map once from memory and gives its maximum,
mean, variance, count of positives and, for the maps that may enter a
top-k, the position of its first maximum (see the C file's header). It is compiled with the system's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) for this machine's CPU (``-march=native``) into a
shared library kept in the cache folder (``$FEATUREMAPS_CACHE_DIR``, else
``$XDG_CACHE_HOME/featuremaps`` or ``~/.cache/featuremaps``), under a name
made from the source, the flags and the CPU's features, so later processes
load it at once. Compiling takes well under a second; processes that compile
at the same time (``torchrun``) each write their own file and rename it into
place. Nothing is downloaded; no compiler at all means :func:`kernel` is
None, after one warning, and the atlas uses PyTorch's reductions.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "failure", "kernel"]

_SOURCE = Path(__file__).with_name("map_numbers.c")
_ABI = 2  # FM_ABI in the C file
_FLAGS = ("-O3", "-shared", "-fPIC", "-pthread")
_TUNED = ("-march=native",)  # tried first; some compilers or CPUs refuse it

_kernel: Any = None
_failed: str | None = None  # why the kernel is unavailable in this process


def cache_dir() -> Path:
    """Where compiled kernels are kept.

    Example:
        >>> cache_dir().name in ("kernels",)
        True
    """
    root = os.environ.get("FEATUREMAPS_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "featuremaps"
    return base / "kernels"


def failure() -> str | None:
    """Why the kernel could not be had in this process (None if it could, or was not tried yet).

    Example:
        >>> failure() is None or isinstance(failure(), str)
        True
    """
    return _failed


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else the platform's description: part of the library's name."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _compile(cc: str, source: Path, target: Path) -> None:
    """Compile ``source`` into ``target``: tuned for this CPU if the compiler takes it, else plain."""
    errors = []
    for tuned in (_TUNED, ()):
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *_FLAGS, *tuned, "-o", tmp, str(source)], capture_output=True, text=True, timeout=300,
            )
            if done.returncode == 0:
                os.replace(tmp, target)  # (atomic: a process loading it sees a whole file)
                return
            errors.append((done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{Path(cc).name} failed: {errors[-1][0]}")


def _load(path: Path) -> Any:
    lib = ctypes.CDLL(str(path))
    if lib.fm_abi() != _ABI:
        raise RuntimeError(f"{path} is another version of the kernel")
    fn = lib.fm_map_numbers
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    fn.argtypes = [p, i64, i64, i64, p, ctypes.c_int, p, p, p, p, p, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def kernel() -> Any:
    """The compiled ``fm_map_numbers`` function, or None where it cannot be had (after one warning).

    Example:
        >>> fn = kernel()
        >>> fn is None or callable(fn)
        True
    """
    global _kernel, _failed
    if _kernel is not None or _failed is not None:
        return _kernel
    try:
        source = _SOURCE.read_bytes()
        key = hashlib.sha256(source + repr((_FLAGS, _TUNED, _cpu_features())).encode()).hexdigest()[:20]
        folder = cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:  # a read-only home: a folder of this process's own
            folder = Path(tempfile.mkdtemp(prefix="featuremaps-kernels-"))
        target = folder / f"map_numbers-{key}.so"
        if target.exists():
            try:
                _kernel = _load(target)
                return _kernel
            except (OSError, RuntimeError, AttributeError):
                target.unlink(missing_ok=True)  # a damaged or foreign file: build it again
        cc = _compiler()
        if cc is None:
            raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
        _compile(cc, _SOURCE, target)
        _kernel = _load(target)
    except Exception as exc:  # any failure: PyTorch's reductions, after one warning
        _failed = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        warnings.warn(
            f"the atlas's C kernel could not be built ({_failed[:300]}); the pass uses PyTorch's reductions "
            "instead (slower). Set FEATUREMAPS_FUSED=0 to skip the attempt.",
            RuntimeWarning, stacklevel=3,
        )
    return _kernel
