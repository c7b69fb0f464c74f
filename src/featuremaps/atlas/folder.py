"""The atlas folder: written atomically (data, patches, synthesized images, pages), read back without pickle.

What :func:`write_folder` writes, in this order (the same atlas always gives
the same bytes):

* ``atlas.safetensors`` - per layer ``{layer}/index``, ``/score``, ``/y``,
  ``/x``, ``/mean``, ``/std``, ``/active_fraction``, ``/max``, ``/count``,
  ``/excluded``;
* ``atlas.json`` - the metadata (:func:`atlas_meta`);
* ``patches/NNN/C.png|jpg`` (:mod:`.patches`), ``synth/NNN/C.jpg``;
* ``index.html`` and ``layers/NNN.html`` (:mod:`.pages`).

:func:`save_folder` stages all of it in a temporary sibling and renames it
into place (see :mod:`featuremaps._outdir`: only a folder featuremaps wrote
is ever replaced); :func:`read_folder` reads the data and metadata back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import _outdir
from ..errors import FeatureMapsError
from .data import FORMAT, AtlasLayer, LayerData
from .pages import write_pages
from .patches import write_patches
from .stats import ChannelStats

if TYPE_CHECKING:
    from .atlas import Atlas

__all__ = ["OWNED", "atlas_meta", "read_folder", "save_folder", "write_folder"]

OWNED = ("atlas.json", "atlas.safetensors", "index.html", "layers", "patches", "synth")
"""The entries of an atlas folder that :meth:`~featuremaps.atlas.Atlas.save` writes (and replaces)."""

_KEYS = ("index", "score", "y", "x", "mean", "std", "active_fraction", "max", "count", "excluded")


def save_folder(atlas: Atlas, directory: str | os.PathLike[str], patch_size: int, patches: bool) -> Path:
    """Write ``atlas`` into ``directory`` atomically (see :meth:`~featuremaps.atlas.Atlas.save`)."""
    target = Path(directory)
    if patch_size < 4:
        raise FeatureMapsError(f"patch_size={patch_size} is too small; use at least 4 pixels")
    _outdir.check_output_folder(target)  # (the _outdir steps are looked up here: tests interpose in them)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write_folder(atlas, tmp, patch_size, patches)
        _outdir.record(tmp)
        kept = _outdir.replace_folder(tmp, target, OWNED)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own staging folder, never the user's
        raise
    if kept:
        warnings.warn(
            f"files that appeared in {str(target)!r} while it was written were kept in "
            f"{str(Path(kept[0]).parent)!r}: {', '.join(Path(k).name for k in kept[:3])}", UserWarning,
            stacklevel=3,
        )
    return target


def write_folder(atlas: Atlas, folder: Path, patch_size: int, patches: bool) -> None:
    """Write every file of the atlas into the (new, empty) ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in atlas.layer_table:
        d = atlas.data[layer.name]
        arrays = (d.index, d.score, d.y, d.x, d.stats.mean, d.stats.std, d.stats.active_fraction, d.stats.max,
                  d.stats.count, d.stats.excluded)
        for key, arr in zip(_KEYS, arrays):
            tensors[f"{layer.name}/{key}"] = torch.from_numpy(np.ascontiguousarray(arr))
    save_file(tensors, str(folder / "atlas.safetensors"), metadata={"format": FORMAT})
    (folder / "atlas.json").write_text(
        json.dumps(atlas_meta(atlas), indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    have = write_patches(atlas, folder, patch_size) if patches else {}
    synth = _write_synthesized(atlas, folder)
    write_pages(atlas, folder, have, synth, patch_size)


def _write_synthesized(atlas: Atlas, folder: Path) -> dict[tuple[int, int], str]:
    """Write the synthesized images; returns ``(layer number, channel) -> relative path``."""
    written: dict[tuple[int, int], str] = {}
    for i, layer in enumerate(atlas.layer_table):
        for c in range(layer.channels):
            data = atlas._synth.get((layer.name, c))
            if data is None:
                continue
            rel = f"synth/{i:03d}/{c}.jpg"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
            written[(i, c)] = rel
    return written


def atlas_meta(atlas: Atlas) -> dict[str, Any]:
    """The content of ``atlas.json``.

    Example:
        >>> from featuremaps.atlas.atlas import _tiny_atlas
        >>> meta = atlas_meta(_tiny_atlas())
        >>> meta["format"], meta["images"], meta["layers"][0]["channels"]
        ('featuremaps-atlas/1', ['a.png'], 2)
    """
    return {
        "format": FORMAT, "model": atlas.model, "k": atlas.k, "score": atlas.score,
        "num_images": atlas.num_images, "input_size": list(atlas.input_size) if atlas.input_size else None,
        "root": atlas.root, "images": atlas.images, "skipped": [list(s) for s in atlas.skipped],
        "layers": [layer.to_json() for layer in atlas.layer_table], "synthesis": atlas.synthesis,
    }


def read_folder(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Any], dict[tuple[str, int], bytes]]:
    """An atlas folder's content: ``(Atlas fields, the synthesis options or {}, synthesized JPEGs)``."""
    folder = Path(directory)
    meta, data_path = _outdir.read_meta(folder, "atlas", FORMAT, "Atlas.save or `featuremaps atlas -o`")
    table = [AtlasLayer.from_json(d) for d in meta["layers"]]
    data: dict[str, LayerData] = {}
    try:
        with safe_open(str(data_path), framework="np") as f:
            for layer in table:
                def get(key: str, name: str = layer.name) -> np.ndarray:
                    return np.asarray(f.get_tensor(f"{name}/{key}"))

                stats = ChannelStats(get("mean"), get("std"), get("active_fraction"), get("max"), get("count"),
                                     get("excluded"))
                data[layer.name] = LayerData(get("index"), get("score"), get("y"), get("x"), stats)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise FeatureMapsError(f"cannot read {str(data_path)!r}: {exc}; the atlas folder is damaged") from None
    images = meta.get("images")
    size = meta.get("input_size")
    fields = {
        "k": int(meta["k"]), "score": str(meta["score"]), "num_images": int(meta["num_images"]),
        "layer_table": table, "data": data, "images": list(images) if images is not None else None,
        "skipped": [(str(a), str(b)) for a, b in meta.get("skipped", [])], "model": str(meta.get("model", "")),
        "input_size": (int(size[0]), int(size[1])) if size else None, "root": meta.get("root"),
    }
    synthesis = meta.get("synthesis")
    synth: dict[tuple[str, int], bytes] = {}
    options: dict[str, Any] = {}
    if synthesis:
        options = {"steps": int(synthesis["steps"]), "size": int(synthesis["size"])}
        for i, layer in enumerate(table):
            sub = folder / "synth" / f"{i:03d}"
            for c in range(layer.channels):
                path = sub / f"{c}.jpg"
                if path.is_file():
                    synth[(layer.name, c)] = path.read_bytes()
    return fields, options, synth
