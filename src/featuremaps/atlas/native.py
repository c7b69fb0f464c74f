"""The atlas's C kernel (``map_numbers.c``): compiled on first use, cached, called through :mod:`ctypes`.

The kernel reads each float32 map once from memory and gives its maximum,
mean, variance, count of positives and, for the maps that may enter a
top-k, the position of its first maximum (see the C file's header). The
same library merges a batch into the top-k (``fm_topk_merge``) and adds
values to exact sums (``fm_exact_add``; the statistics' moments straight
from float32 with ``fm_moments_add``; ``fm_carry`` normalizes them);
:func:`function` gives each. It is compiled with the
system's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) for this
machine's CPU (``-march=native``) and with OpenMP, linked against the OpenMP
runtime that PyTorch has loaded in this process (its own ``libgomp``, found
in ``/proc/self/maps``), so that the kernel's threads are PyTorch's own
(where no runtime is found, or the compiler has no OpenMP, it is built for
one thread). The shared library is kept in the cache folder
(``$FEATUREMAPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/featuremaps`` or
``~/.cache/featuremaps``), under a name made from the source, the flags, the
runtime's name and the CPU's features, so later processes load it at once
(a kernel not loaded for :data:`STALE_DAYS` days, left by an older version,
is removed when a new one is compiled).
Compiling takes about half a second; processes that compile at the same time
(``torchrun``) each write their own file and rename it into place. Nothing is
downloaded; no compiler at all means :func:`kernel` is
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
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "failure", "function", "kernel", "one_thread", "openmp_runtime", "threads"]

_SOURCE = Path(__file__).with_name("map_numbers.c")
_ABI = 7  # FM_ABI in the C file
_FLAGS = ("-O3", "-fPIC")
_TUNED = ("-march=native",)  # tried first; some compilers or CPUs refuse it
_OPENMP = ("-fopenmp",)  # tried first, where PyTorch's OpenMP runtime is found
_RUNTIMES = ("libgomp", "libiomp5", "libomp")  # OpenMP runtimes that GCC's OpenMP code can call

#: Days after which a kernel no process has loaded is removed (when another is compiled into the folder).
STALE_DAYS = 30
_lib: Any = None  # the loaded library
_failed: str | None = None  # why the kernel is unavailable in this process
_omp: Any = None  # PyTorch's OpenMP runtime (False: none found)
_local = threading.local()  # .threads: the count this thread's calls use (see one_thread)


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


def openmp_runtime() -> Path | None:
    """The OpenMP runtime library that this process has loaded (PyTorch's own; Linux), or None.

    Example:
        >>> import torch
        >>> path = openmp_runtime()
        >>> path is None or path.name.startswith(("libgomp", "libiomp5", "libomp"))
        True
    """
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    path = Path(fields[5].strip())
                    if path.name.startswith(_RUNTIMES) and ".so" in path.name and path.is_file():
                        return path
    except OSError:
        pass
    return None


def _compile(cc: str, source: Path, target: Path, runtime: Path | None) -> None:
    """Compile ``source`` into ``target``: with OpenMP linked against ``runtime`` and tuned for this CPU where the
    compiler takes them, else without (for one thread, or portable C)."""
    errors = []
    for openmp in ((True, False) if runtime is not None else (False,)):
        for tuned in (_TUNED, ()):
            fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
            os.close(fd)
            obj = tmp[: -len(".so.tmp")] + ".o"
            # compiled, then linked on its own: the library then needs the runtime PyTorch loaded (by its
            # name), and not the compiler's own copy, which would start a second set of threads
            steps = [[cc, *_FLAGS, *tuned, *(_OPENMP if openmp else ()), "-c", "-o", obj, str(source)],
                     [cc, "-shared", "-o", tmp, obj, *([str(runtime), "-Wl,-z,defs"] if openmp else ()), "-lm"]]
            try:
                for step in steps:
                    done = subprocess.run(step, capture_output=True, text=True, timeout=300)
                    if done.returncode != 0:
                        errors.append((done.stderr or done.stdout).strip().splitlines()[-1:] or
                                      [f"exit {done.returncode}"])
                        break
                else:
                    os.replace(tmp, target)  # (atomic: a process loading it sees a whole file)
                    return
            finally:
                for leftover in (tmp, obj):
                    if os.path.exists(leftover):
                        os.unlink(leftover)
    raise RuntimeError(f"{Path(cc).name} failed: {errors[-1][0]}")


def _load(path: Path) -> Any:
    lib = ctypes.CDLL(str(path))
    if lib.fm_abi() != _ABI:
        raise RuntimeError(f"{path} is another version of the kernel")
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    fn = lib.fm_map_numbers
    fn.argtypes = [p, i64, i64, i64, p, ctypes.c_int, p, p, p, p, p, ctypes.c_int]
    fn.restype = ctypes.c_int
    merge = lib.fm_topk_merge
    merge.argtypes = [i64, p, i64, i64, p, p, p, p, p, p, p, p]
    merge.restype = ctypes.c_int
    exact = lib.fm_exact_add
    exact.argtypes = [p, i64, i64, p, ctypes.c_int]
    exact.restype = ctypes.c_int
    moments = lib.fm_moments_add
    moments.argtypes = [p, p, i64, i64, ctypes.c_double, p, ctypes.c_int]
    moments.restype = ctypes.c_int
    carry = lib.fm_carry
    carry.argtypes = [p, i64, i64]
    carry.restype = ctypes.c_int
    return lib


def threads() -> int:
    """The threads a call of the library from this thread may use: PyTorch's count, or 1 in :func:`one_thread`.

    Example:
        >>> with one_thread():
        ...     threads()
        1
    """
    return int(getattr(_local, "threads", 0) or torch.get_num_threads())


@contextmanager
def one_thread() -> Iterator[None]:
    """This thread's calls of the library, and PyTorch's operations in it, use one thread (other threads: theirs).

    For a thread that works beside PyTorch's own (the atlas's merge, while
    the next forward runs): a call or an operation there would otherwise
    start a second team of threads on the cores the forward's team uses.
    OpenMP keeps its thread count per thread, so the forward's count is
    not touched.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with one_thread():
        ...     threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    before = getattr(_local, "threads", 0)
    omp = _openmp()
    count = torch.get_num_threads()  # (also PyTorch's own first setting of this thread's count, which would undo ours)
    _local.threads = 1
    if omp is not None:
        omp.omp_set_num_threads(1)
    try:
        yield
    finally:
        _local.threads = before
        if omp is not None:
            omp.omp_set_num_threads(count)


def _openmp() -> Any:
    """PyTorch's OpenMP runtime, loaded in this process (None where none is found)."""
    global _omp
    if _omp is None:
        runtime = openmp_runtime()
        try:
            _omp = ctypes.CDLL(str(runtime)) if runtime is not None else False
        except OSError:
            _omp = False
    return _omp or None


def kernel() -> Any:
    """The compiled ``fm_map_numbers`` function, or None where it cannot be had (after one warning).

    Example:
        >>> fn = kernel()
        >>> fn is None or callable(fn)
        True
    """
    return function("fm_map_numbers")


def function(name: str) -> Any:
    """The library's function ``name`` (``fm_map_numbers``, ``fm_topk_merge``, ``fm_exact_add``,
    ``fm_moments_add``, ``fm_carry``), or None where the library cannot be had (after one warning).

    Example:
        >>> fn = function("fm_topk_merge")
        >>> fn is None or callable(fn)
        True
    """
    lib = _library()
    return None if lib is None else getattr(lib, name)


def _library() -> Any:
    """The compiled library: built or loaded on first use; None where it cannot be had (after one warning)."""
    global _lib, _failed
    if _lib is not None or _failed is not None:
        return _lib
    try:
        source = _SOURCE.read_bytes()
        runtime = openmp_runtime()
        key = hashlib.sha256(
            source + repr((_FLAGS, _TUNED, _OPENMP, runtime and runtime.name, _cpu_features())).encode()
        ).hexdigest()[:20]
        folder = cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:  # a read-only home: a folder of this process's own
            folder = Path(tempfile.mkdtemp(prefix="featuremaps-kernels-"))
        target = folder / f"map_numbers-{key}.so"
        if target.exists():
            try:
                _lib = _load(target)
                _mark_used(target)
                return _lib
            except (OSError, RuntimeError, AttributeError):
                target.unlink(missing_ok=True)  # a damaged or foreign file: build it again
        cc = _compiler()
        if cc is None:
            raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
        _compile(cc, _SOURCE, target, runtime)
        _lib = _load(target)
        _remove_stale(folder, keep=target)
    except Exception as exc:  # any failure: PyTorch's reductions, after one warning
        _failed = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        warnings.warn(
            f"the atlas's C kernel could not be built ({_failed[:300]}); the pass uses PyTorch's reductions "
            "instead (slower). Set FEATUREMAPS_FUSED=0 to skip the attempt.",
            RuntimeWarning, stacklevel=4,
        )
    return _lib


def _mark_used(path: Path) -> None:
    """Set a kernel's modification time to now when it is a day old or more (so it is not taken for stale)."""
    now = time.time()
    try:
        if now - path.stat().st_mtime >= 86400:
            os.utime(path, (now, now))
    except OSError:  # a read-only cache: the kernel may then be compiled again one day, nothing worse
        pass


def _remove_stale(folder: Path, keep: Path) -> list[Path]:
    """Remove the kernels in ``folder`` not loaded (nor compiled) for :data:`STALE_DAYS` days, but ``keep``.

    Another featuremaps, PyTorch or CPU sharing the folder marks the kernel it
    loads (:func:`_mark_used`); should it be removed all the same, it is
    compiled again. Returns what was removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("map_numbers-old.so", "map_numbers-new.so", "notes.txt"):
        ...     (folder / name).touch()
        >>> os.utime(folder / "map_numbers-old.so", (0, 0)); os.utime(folder / "notes.txt", (0, 0))
        >>> [p.name for p in _remove_stale(folder, keep=folder / "map_numbers-new.so")]
        ['map_numbers-old.so']
        >>> sorted(p.name for p in folder.iterdir())
        ['map_numbers-new.so', 'notes.txt']
    """
    now = time.time()
    removed = []
    for path in folder.glob("map_numbers-*.so"):
        try:
            if path != keep and now - path.stat().st_mtime > STALE_DAYS * 86400:
                path.unlink()
                removed.append(path)
        except OSError:  # gone already (another process), or not ours to remove
            continue
    return removed
