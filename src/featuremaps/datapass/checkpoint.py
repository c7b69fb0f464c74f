"""Checkpoints of a dataset pass (the atlas's and concept discovery's): atomic, checksummed, set aside when damaged.

A checkpoint is one safetensors file per rank (no pickle) whose metadata
holds the format, the run's fingerprint, the state's counters as JSON and a
SHA-256 over all of it and every tensor's bytes. Each pass brings its own
format name, its state's tensors and counters, and the checks of a restored
state; this module owns the file:

* :func:`write_checkpoint` replaces the file atomically (the old one or the
  new one, never half of either);
* :func:`open_checkpoint` verifies the checksum, ignores a checkpoint made
  with other arguments (one warning) and sets a damaged one aside as
  ``NAME.damaged`` (renamed, never deleted; one warning naming it);
* :class:`CheckpointFiles` says where a rank's file is (next to the output
  folder, in ``.<name>.partial``, or in a folder of the caller's choice) and
  when the next one is due.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from .._atomic import atomic_path

__all__ = [
    "DamagedCheckpoint", "OtherVersion", "CheckpointFiles", "checksum", "write_checkpoint", "read_checkpoint",
    "open_checkpoint", "discard_checkpoint", "set_aside", "model_signature",
]

T = TypeVar("T")


class DamagedCheckpoint(Exception):
    """A checkpoint failed its checksum or its checks (the message says which)."""


class OtherVersion(DamagedCheckpoint):
    """A checkpoint of another featuremaps version (set aside too, but not called damaged)."""


def checksum(tensors: Mapping[str, torch.Tensor], fingerprint: str, state: str, fmt: str) -> str:
    """The SHA-256 of a checkpoint's format, fingerprint, state text and tensors (names, types, shapes, bytes).

    Example:
        >>> import torch
        >>> a = checksum({"x": torch.zeros(2)}, "f", "{}", "fmt/1")
        >>> b = checksum({"x": torch.ones(2)}, "f", "{}", "fmt/1")
        >>> a == checksum({"x": torch.zeros(2)}, "f", "{}", "fmt/1"), a == b
        (True, False)
    """
    h = hashlib.sha256()
    for part in (fmt, fingerprint, state):
        h.update(part.encode("utf-8") + b"\0")
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_checkpoint(
    path: Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any], fingerprint: str, fmt: str
) -> None:
    """Write a checkpoint atomically: the file is the old one or the new one, never half of either."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(dict(state), sort_keys=True)
    meta = {"format": fmt, "fingerprint": fingerprint, "state": text, "sha256": checksum(data, fingerprint, text, fmt)}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(data, str(tmp), metadata=meta)  # (looked up here: tests cut it halfway)


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``NAME.damaged`` (``.damaged-2``... if taken); the new path."""
    aside = path.with_name(path.name + ".damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{n}")
    path.rename(aside)
    return aside


def read_checkpoint(path: Path, fingerprint: str, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and state of a checkpoint whose checksum holds; None if made with other arguments.

    Raises :class:`DamagedCheckpoint` (:class:`OtherVersion`) for a file that fails.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise DamagedCheckpoint(f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    found = str(meta.get("format"))
    if found != fmt:
        if found.startswith(fmt.split("/")[0] + "/"):
            raise OtherVersion(f"it was made by another version of featuremaps ({found})")
        raise DamagedCheckpoint(f"its format is {found!r}, not {fmt!r}")
    text = meta.get("state", "")
    if meta.get("sha256") != checksum(tensors, meta.get("fingerprint", ""), text, fmt):
        raise DamagedCheckpoint("its checksum does not match its data")
    if meta.get("fingerprint") != fingerprint:
        return None
    try:
        state = json.loads(text)
    except ValueError:
        raise DamagedCheckpoint("its state is not JSON") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint("its state is not a JSON object")
    return tensors, state


def open_checkpoint(
    path: Path, fingerprint: str, fmt: str, restore: Callable[[dict[str, torch.Tensor], dict[str, Any]], T],
    *, stacklevel: int = 3,
) -> T | None:
    """The state saved at ``path`` if it is sound and from this run's arguments; else None (after one warning).

    ``restore`` builds the state from the tensors and counters and raises
    :class:`DamagedCheckpoint` (or any exception) when they do not fit the
    run. A damaged checkpoint is renamed to ``NAME.damaged`` and named in
    the warning.
    """
    if not path.is_file():
        return None
    try:
        found = read_checkpoint(path, fingerprint, fmt)
        if found is None:
            warnings.warn(
                f"ignoring checkpoint {str(path)!r}: it was made with other arguments, data or weights; starting over",
                UserWarning, stacklevel=stacklevel,
            )
            return None
        try:
            return restore(*found)
        except DamagedCheckpoint:
            raise
        except Exception as exc:  # noqa: BLE001 - a missing key, a bad shape, a wrong type: all damage
            raise DamagedCheckpoint(f"its state cannot be restored ({str(exc).splitlines()[0] if str(exc) else exc!r})")
    except DamagedCheckpoint as exc:
        aside = set_aside(path)
        kind = "unusable" if isinstance(exc, OtherVersion) else "damaged"
        warnings.warn(
            f"{kind} checkpoint {str(path)!r} ({exc}): set aside as {aside.name!r}; starting over",
            UserWarning, stacklevel=stacklevel,
        )
        return None


def discard_checkpoint(path: Path, fmt: str) -> None:
    """Remove the checkpoint at ``path`` (for ``resume=False``) if it is one of ``fmt``'s; set anything else aside."""
    if not path.is_file():
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            ours = str((f.metadata() or {}).get("format", "")).startswith(fmt.split("/")[0] + "/")
    except Exception:  # noqa: BLE001 - not a readable safetensors file
        ours = False
    if ours:
        path.unlink()
    else:
        set_aside(path)


def model_signature(model: nn.Module) -> str:
    """A hash of the model's parameter and buffer names, shapes, types and sums (other weights: another hash).

    Example:
        >>> from torch import nn
        >>> model_signature(nn.Linear(2, 2)) == model_signature(nn.Linear(2, 3))
        False
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if t.numel() and not t.is_complex():
                h.update(repr(float(t.detach().double().sum())).encode())
    return h.hexdigest()


_Files = TypeVar("_Files", bound="CheckpointFiles")


@dataclass
class CheckpointFiles:
    """This rank's checkpoint file (``None``: no checkpoints), the run's fingerprint, and how often to save.

    Example:
        >>> files = CheckpointFiles.open("out/concepts", None, 100, rank=0, world=1)
        >>> files.file.as_posix(), files.due(250, 100), files.due(150, 100)
        ('out/.concepts.partial/rank0-of-1.safetensors', True, False)
    """

    folder: Path | None
    file: Path | None
    every: int | None
    fingerprint: str = ""

    @classmethod
    def open(
        cls: type[_Files], out: str | os.PathLike[str] | None, checkpoint_dir: str | os.PathLike[str] | None,
        every: int | None, rank: int, world: int,
    ) -> _Files:
        """The files of a run writing ``out`` (in ``.<name>.partial`` next to it) or in ``checkpoint_dir``."""
        folder: Path | None = None
        if checkpoint_dir is not None:
            folder = Path(checkpoint_dir)
        elif out is not None:
            target = Path(out)
            folder = target.parent / f".{target.name}.partial"
        file = folder / f"rank{rank}-of-{world}.safetensors" if folder is not None else None
        return cls(folder, file, every)

    def due(self, position: int, last_saved: int) -> bool:
        """Whether ``position - last_saved`` items call for a checkpoint."""
        return self.file is not None and self.every is not None and position - last_saved >= self.every

    def remove(self) -> None:
        """Delete this rank's checkpoint, then the folder if that left it empty."""
        if self.file is not None:
            self.file.unlink(missing_ok=True)
            if self.folder is not None:
                try:
                    self.folder.rmdir()
                except OSError:
                    pass
