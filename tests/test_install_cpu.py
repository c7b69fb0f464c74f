"""The README's CPU-only install stays CPU-only (#14.11): nothing we declare pins another torch or torchvision.

``pip install torch torchvision --index-url .../whl/cpu`` then ``pip install -e ".[test]"`` keeps the CPU builds
only while every requirement on torch or torchvision that featuremaps declares (dependencies and every extra)
is satisfied by any recent release: a lower bound at most, never ``==``, ``<`` or ``~=``.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("\ndependencies = [", 1)[1].split("\n[project.scripts]", 1)[0]
    return re.findall(r'^\s*"([^"]+)",?\s*$', project, flags=re.M)


def test_no_declared_requirement_pins_torch_or_torchvision() -> None:
    reqs = [Requirement(r) for r in _declared() if re.match(r"[A-Za-z]", r)]
    torchy = [r for r in reqs if r.name.lower() in ("torch", "torchvision")]
    assert {r.name for r in torchy} == {"torch", "torchvision"}  # both are declared (dependencies, test extra)
    for r in torchy:
        assert all(s.operator in (">=", ">", "!=") for s in r.specifier), f"{r} would replace a CPU build"


def test_the_readme_documents_the_cpu_pair_in_order() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = readme.index("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu")
    assert readme.index('pip install -e ".[test]"', first) > first
