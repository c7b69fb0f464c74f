"""Packaging promises: a cheap import, a typed package, one public surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import featuremaps as fm


def test_import_does_not_pull_matplotlib_or_browser_code():
    code = (
        "import sys, featuremaps\n"
        "heavy = [m for m in ('matplotlib', 'playwright', 'rich', 'click', 'torchvision') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_package_is_typed_and_exports_what_it_lists():
    assert (Path(fm.__file__).parent / "py.typed").is_file()
    missing = [name for name in fm.__all__ if not hasattr(fm, name)]
    assert missing == []


def test_every_public_callable_has_a_docstring_with_an_example():
    undocumented = []
    for name in fm.__all__:
        obj = getattr(fm, name)
        if callable(obj) and not isinstance(obj, type(fm)):
            doc = getattr(obj, "__doc__", "") or ""
            if "Example" not in doc and not (isinstance(obj, type) and issubclass(obj, BaseException)):
                undocumented.append(name)
    assert undocumented == []
