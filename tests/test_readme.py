"""The README's API examples run as written, in order, in a fresh folder (what a new user pastes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# The blocks of "The API at a glance", "Pictures", "Explaining a prediction" and "Which channels drove the
# decision", which build on each other. The others need files of yours (models, photo folders, DICOM: the
# X-ray section has its own test, tests/test_readme_medical.py) or a loader.
RUN = ("import featuremaps as fm", "fm.visualize(maps)", "cam = fm.GradCAM(", "rel = fm.channel_relevance(")


def test_the_api_examples_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    chosen = [next(b for b in blocks if b.startswith(start)) for start in RUN]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in chosen:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "maps.safetensors").is_file() and (tmp_path / "out" / "index.html").is_file()
    assert (tmp_path / "layer.svg").is_file() and (tmp_path / "x.png").is_file()
    assert namespace["cam"].layer_names == ["_act_head"]  # what the README says "auto" picks
    assert tuple(namespace["heat"].shape) == (1, 224, 224)
