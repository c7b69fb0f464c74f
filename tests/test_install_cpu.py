"""The README's CPU-only install stays CPU-only (#14.11): nothing we declare pins another torch or torchvision.

``pip install torch torchvision --index-url .../whl/cpu`` then ``pip install -e ".[test]"`` keeps the CPU builds
only while every requirement on torch or torchvision that featuremaps declares (dependencies and every extra)
is satisfied by any recent release: a lower bound at most, never ``==``, ``<`` or ``~=``; and the same holds
for every package those bring, as installed here. ``.ci/cpu_install`` runs the pair itself (it needs the index).
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


def _closure_requirements() -> list[tuple[str, Requirement]]:
    """(who, requirement) for every requirement reachable from featuremaps[test] through installed packages."""
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    todo: list[tuple[str, Requirement, frozenset[str]]] = [
        ("featuremaps", Requirement(r), frozenset({"test", "medical", "tensorboard"}))
        for r in _declared() if re.match(r"[A-Za-z]", r)]
    seen: set[tuple[str, frozenset[str]]] = set()
    found: list[tuple[str, Requirement]] = []
    while todo:
        who, req, extras = todo.pop()
        env_ok = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))
        if not env_ok:
            continue
        found.append((who, req))
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue  # an optional dependency that is not installed here
        todo += [(req.name, Requirement(r), frozenset(req.extras)) for r in requires]
    return found


def test_nothing_installed_for_the_test_extras_pins_torch_or_torchvision() -> None:
    """Walk featuremaps[test]'s dependency closure as installed here: every requirement on torch or torchvision
    is a lower bound at most (a CPU pair that meets the bounds is kept), except torchvision's own on torch (the
    pair comes from one index, as the README says)."""
    found = _closure_requirements()
    torchy = [(who, r) for who, r in found if r.name.lower() in ("torch", "torchvision")]
    assert {who for who, _ in torchy} >= {"featuremaps", "grad-cam", "timm", "torchvision"}  # the walk went deep
    for who, r in torchy:
        if who.lower() == "torchvision" and r.name == "torch":
            continue
        assert all(s.operator in (">=", ">", "!=") for s in r.specifier), f"{who} requires {r}: it could replace a CPU build"
