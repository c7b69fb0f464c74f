"""Output folders: featuremaps writes only into folders it can prove are its own, and removes only its own files.

The rules (one place, read by the library and the command line):

* a folder is ours only if it holds our marker, ``.featuremaps``: a manifest
  listing every file (with its SHA-256) and sub-folder featuremaps wrote;
* a command may write into a new folder, an empty one, or one whose every
  entry the manifest lists with the same bytes: anything else (a file of the
  user's, one changed since we wrote it, a symlink) makes it refuse, before
  any work;
* a save replaces only entries it writes, and deletes a file only when the
  manifest lists it with the bytes it has now; it never removes a folder tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Collection, Iterable, Iterator
from contextlib import suppress
from pathlib import Path

from ._atomic import atomic_path
from .errors import FeatureMapsError

__all__ = [
    "MARKER", "OutputFolderError", "check_output_folder", "foreign_entries", "read_meta", "record", "replace_folder",
]

MARKER = ".featuremaps"
"""The manifest featuremaps leaves in every folder it writes."""

_FORMAT = "featuremaps-output/1"
_NOTE = "written by featuremaps: it may write here again, replacing only the files listed here"


class OutputFolderError(FeatureMapsError, ValueError):
    """An output folder holds files featuremaps did not write (or is a file)."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under ``folder`` as ``(relative POSIX path, path)``, parents first; symlinks not followed."""
    for entry in sorted(folder.iterdir()):
        rel = entry.relative_to(folder).as_posix()
        yield rel, entry
        if entry.is_dir() and not entry.is_symlink():
            for sub, path in _walk(entry):
                yield f"{rel}/{sub}", path


def _read(folder: Path) -> tuple[dict[str, str], set[str]] | None:
    """The manifest of ``folder``: ``(files -> sha256, folders)``; None when it has no valid one."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return None
        files = {str(k): str(v) for k, v in dict(data.get("files", {})).items()}
        dirs = {str(d) for d in data.get("dirs", [])}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return files, dirs


def _write(folder: Path, files: dict[str, str], dirs: set[str]) -> None:
    text = json.dumps({"format": _FORMAT, "note": _NOTE, "files": dict(sorted(files.items())),
                       "dirs": sorted(dirs)}, indent=1) + "\n"
    with atomic_path(folder / MARKER) as tmp:
        tmp.write_text(text, encoding="utf-8")


def foreign_entries(folder: str | os.PathLike[str]) -> list[str]:
    """The entries of ``folder`` that featuremaps cannot prove it wrote (relative POSIX paths, sorted).

    An entry is ours when the folder's manifest lists it (a file with the same
    SHA-256). Symlinks and other special files are never ours. A folder that
    does not exist holds nothing.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "notes.txt").write_text("mine")
        >>> foreign_entries(out)
        ['notes.txt']
        >>> record(out, ["notes.txt"]); foreign_entries(out)
        []
    """
    base = Path(folder)
    if not base.is_dir():
        return []
    manifest = _read(base)
    files, dirs = manifest or ({}, set())
    out: list[str] = []
    for rel, path in _walk(base):
        if rel == MARKER and manifest is not None:
            continue
        if path.is_symlink():
            out.append(rel)
        elif path.is_dir():
            if rel not in dirs:
                out.append(rel)
        elif not path.is_file() or files.get(rel) != _digest(path):
            out.append(rel)
    return out


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Check that featuremaps may write into ``folder``: new, empty, or holding only what it wrote.

    Raises:
        OutputFolderError: ``folder`` is a file, or holds entries featuremaps
            did not write (they are named; nothing is changed).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_folder(out / "new") == out / "new"
        True
        >>> _ = (out / "atlas.json").write_text("{}")
        >>> check_output_folder(out)
        Traceback (most recent call last):
        ...
        featuremaps._outdir.OutputFolderError: ... holds other files (atlas.json); pass a new or empty folder
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{path} is a file; pass a folder")
    others = foreign_entries(path)
    if others:
        names = dict.fromkeys(rel.split("/", 1)[0] for rel in others)
        top = [n + "/" if (path / n).is_dir() and not (path / n).is_symlink() else n for n in names]
        shown = ", ".join(top[:3]) + (", ..." if len(top) > 3 else "")
        raise OutputFolderError(f"{path} holds other files ({shown}); pass a new or empty folder")
    return path


def record(folder: str | os.PathLike[str], entries: Iterable[str] | None = None) -> None:
    """Add ``entries`` (relative paths; default: everything in ``folder``) to its manifest, with their bytes.

    Only call it for entries featuremaps itself wrote. Symlinks are never recorded.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "a.txt").write_text("x"); record(out)
        >>> foreign_entries(out), (out / ".featuremaps").is_file()
        ([], True)
    """
    base = Path(folder)
    files, dirs = _read(base) or ({}, set())
    chosen = None if entries is None else {Path(e).as_posix() for e in entries}
    for rel, path in _walk(base):
        if rel == MARKER or path.is_symlink():
            continue
        if chosen is not None and not any(rel == c or rel.startswith(c + "/") for c in chosen):
            continue
        if path.is_dir():
            dirs.add(rel)
        elif path.is_file():
            files[rel] = _digest(path)
    _write(base, files, dirs)


def _remove_recorded(folder: Path) -> bool:
    """Delete from ``folder`` exactly the entries its manifest lists with the same bytes; True if it is gone."""
    files, dirs = _read(folder) or ({}, set())
    entries = list(_walk(folder))
    for rel, path in entries:
        if not path.is_symlink() and path.is_file() and rel in files and files[rel] == _digest(path):
            path.unlink()
    for rel, path in reversed(entries):  # children before parents
        if rel in dirs and path.is_dir() and not path.is_symlink():
            with suppress(OSError):
                path.rmdir()  # only when empty
    if [p for p in folder.iterdir() if p.name != MARKER]:
        return False
    (folder / MARKER).unlink(missing_ok=True)
    with suppress(OSError):
        folder.rmdir()
    return not folder.exists()


def replace_folder(staged: Path, target: Path, owned: Collection[str]) -> list[str]:
    """Put the recorded folder ``staged`` in place of ``target`` (new, empty, or one featuremaps wrote).

    ``target`` is swapped for ``staged`` in one rename; entries of the old
    folder whose top-level names are not in ``owned`` (another command's
    output) are moved into the new one with their records; the rest of the
    old folder is deleted entry by entry, only where the manifest lists it.

    Returns:
        What was kept instead of deleted (entries featuremaps did not write
        that appeared meanwhile), in a hidden sibling folder: empty normally.
    """
    if not target.exists():
        os.replace(staged, target)
        return []
    check_output_folder(target)  # checked before any work too; again, just before the swap
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    old_files, old_dirs = _read(old) or ({}, set())
    new_files, new_dirs = _read(target) or ({}, set())
    for entry in sorted(old.iterdir()):
        name = entry.name
        if name == MARKER or name in owned or (target / name).exists():
            continue
        os.replace(entry, target / name)
        new_files.update({k: v for k, v in old_files.items() if k == name or k.startswith(name + "/")})
        new_dirs.update(d for d in old_dirs if d == name or d.startswith(name + "/"))
    _write(target, new_files, new_dirs)
    if _remove_recorded(old):
        return []
    return [str(old / rel) for rel, _ in _walk(old)]


def read_meta(folder: Path, what: str, fmt: str, written_by: str) -> tuple[dict, Path]:
    """The JSON metadata of a folder featuremaps saved (``WHAT.json``) and its tensors' path (``WHAT.safetensors``).

    One clear error for a folder that is not one, a damaged metadata file
    and a format from another version.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> read_meta(folder, "atlas", "featuremaps-atlas/1", "Atlas.save")
        Traceback (most recent call last):
        ...
        featuremaps.errors.FeatureMapsError: ... is not an atlas folder (no atlas.json / atlas.safetensors); ...
    """
    meta_path, data_path = folder / f"{what}.json", folder / f"{what}.safetensors"
    article = "an" if what[:1] in "aeiou" else "a"
    if not meta_path.is_file() or not data_path.is_file():
        raise FeatureMapsError(
            f"{str(folder)!r} is not {article} {what} folder (no {meta_path.name} / {data_path.name}); pass the "
            f"folder written by {written_by}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatureMapsError(f"cannot read {str(meta_path)!r}: {exc}; the {what} folder is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise FeatureMapsError(
            f"{str(meta_path)!r} has format {found!r}, not {fmt!r}; make it again with this version"
        )
    return meta, data_path
