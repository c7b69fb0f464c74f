"""Weights safety: reading weights and model files without running code from them.

What this module guarantees:

* Every ``torch.load`` is ``weights_only=True`` first. A file that needs
  unpickling is refused with :class:`~featuremaps.errors.UnsafeModelError`
  naming the Python objects it holds, unless the caller passed the explicit
  ``trust_pickle=True`` (CLI: ``--trust-pickle``).
* Files that are neither a torch archive nor a pickle are refused before
  ``torch.load`` sees them; TorchScript archives are told apart from weights.
* A state dict must fit the architecture exactly (strict); the error lists
  missing, unexpected and wrongly shaped keys.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafeModelError
from ._common import _first_line

_WEIGHT_CHOICES = (
    "weights=PATH (a state dict file), weights='download' (the library's pretrained weights, "
    "uses the network) or weights='random' (random initialization)"
)


def _check_weights_arg(weights: object, spec: object) -> None:
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ModelLoadError(
            f"weights for model {spec!r} must be a path, 'download', 'random' or None, "
            f"got {type(weights).__name__}"
        )


def _weights_kind(weights: str | os.PathLike[str] | None) -> str | None:
    """``None``, ``"download"``, ``"random"`` or ``"path"``."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights.strip().lower() in ("download", "random"):
        return weights.strip().lower()
    return "path"


def _require_weights(spec: str, weights: str | os.PathLike[str] | None) -> str:
    kind = _weights_kind(weights)
    if kind is None:
        raise ModelLoadError(
            f"model {spec!r} needs weights: pass {_WEIGHT_CHOICES}; featuremaps never "
            "downloads unless asked"
        )
    return kind


def _no_keyword_weights(weights: str | os.PathLike[str] | None, spec: str, why: str) -> None:
    kind = _weights_kind(weights)
    if kind in ("download", "random"):
        raise ModelLoadError(
            f"weights={weights!r} does not apply to {spec!r}: {why}; leave weights unset or "
            "pass weights=PATH to load a state dict on top"
        )


def _load_weights_file(model: nn.Module, weights: Any, spec: str, trust_pickle: bool) -> None:
    path = Path(os.fspath(weights)).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} for model {spec!r} not found; check the path")
    if _is_torchscript(path):
        raise ModelLoadError(
            f"weights file {str(path)!r} is a TorchScript model, not a state dict; pass it as the "
            "model spec instead"
        )
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ModelLoadError(
                f"weights file {str(path)!r} needs safetensors; pip install safetensors"
            ) from exc
        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read weights file {str(path)!r}: {_first_line(exc)}; the file may be corrupt"
            ) from exc
    else:
        state = _torch_load(path, trust_pickle, spec)
    _load_state_dict(model, state, spec, str(path))


def _torch_load(path: Path, trust_pickle: bool, spec: str) -> Any:
    """``torch.load`` on CPU, safely unless the caller trusts the file."""
    _check_not_garbage(path, spec)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            found = sorted(_unsafe_globals(path))
            if found:
                more = ", ..." if len(found) > 4 else ""
                holds = f"holds pickled Python objects ({', '.join(found[:4])}{more})"
            else:
                holds = "is not plain weights: it may hold pickled Python objects"
            raise UnsafeModelError(
                f"{_file_label(path, spec)} {holds} that can run arbitrary code when loaded; "
                "pass trust_pickle=True (CLI: --trust-pickle) only if you trust the file's source"
            ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {_file_label(path, spec)}: {_first_line(exc)}; the file may be corrupt "
            "or not a PyTorch file"
        ) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {_file_label(path, spec)} even with trust_pickle=True: "
            f"{_first_line(exc)}; the file may be corrupt or need code that is not importable"
        ) from exc


def _file_label(path: Path, spec: str) -> str:
    if str(path) == spec:
        return f"model file {spec!r}"
    return f"file {str(path)!r} for model {spec!r}"


def _check_not_garbage(path: Path, spec: str) -> None:
    """Reject files that are neither a zip archive nor a pickle (text, images...)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot open {_file_label(path, spec)}: {exc.strerror or exc}; check the path and "
            "its permissions"
        ) from exc
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return
    raise ModelLoadError(
        f"{_file_label(path, spec)} is not a PyTorch file (neither a torch.save archive nor a "
        "pickle); check the path, or re-save it with torch.save"
    )


def _unsafe_globals(path: Path) -> list[str]:
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return [str(g) for g in finder(str(path))]
    except Exception:
        return []


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _load_state_dict(model: nn.Module, state: Any, spec: str, origin: str) -> None:
    sd = _unwrap_state_dict(state, origin)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = ", ..." if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
        raise ModelLoadError(
            f"weights {origin!r} do not fit model {spec!r}: {'; '.join(parts)}; check that the "
            "weights were saved from this architecture"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"weights {origin!r} do not fit model {spec!r}: {_first_line(exc)}"
        ) from exc


def _unwrap_state_dict(state: Any, origin: str) -> dict[str, torch.Tensor]:
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                state = inner
                break
    if not isinstance(state, Mapping) or not state:
        raise ModelLoadError(
            f"weights file {origin!r} holds a {type(state).__name__}, not a state dict; save "
            "weights with torch.save(model.state_dict(), path)"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"weights file {origin!r} is not a state dict: entries {', '.join(bad[:3])} are not "
            "tensors; save weights with torch.save(model.state_dict(), path)"
        )
    sd: dict[str, torch.Tensor] = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# ------------------------------------------------------------------ small helpers
