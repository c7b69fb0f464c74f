"""The README section "X-rays and CT" runs as written: its Python blocks and its command lines."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featuremaps.cli import cli

from medical_files import CT_SERIES, CT_SMALL, nibabel_data

README = Path(__file__).resolve().parents[1] / "README.md"


def section_blocks() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    start = text.index("### X-rays and CT")
    end = text.index("\n## ", start)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S)


def test_the_x_ray_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    blocks = section_blocks()
    kinds = [k for k, _ in blocks]
    assert kinds == ["python", "python", "bash"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "xray_model", raising=False)
    (tmp_path / "xray_model.py").write_text(blocks[0][1], encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))  # the API block imports it like a user's script would

    code = blocks[1][1]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ") and "(" in line]
    assert printed == expected  # the outputs the README shows are the real ones
    assert Image.open("cam.png").size == (224, 224) and Image.open("axial.png").size == (33, 41)
    assert "CT" in Path("xray.html").read_text(encoding="utf-8")
    assert 'id="vol-sagittal-slider" min="0" max="32"' in Path("mr.html").read_text(encoding="utf-8")

    # the command lines, with the files they name
    sys.path.remove(str(tmp_path))  # now only the CLI's own lookup finds xray_model.py
    monkeypatch.delitem(sys.modules, "xray_model", raising=False)
    import importlib

    spec = importlib.util.spec_from_file_location("xray_model_for_weights", tmp_path / "xray_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    torch.save(module.build().state_dict(), tmp_path / "xray.pth")
    torch.save(module.build_3d().state_dict(), tmp_path / "mr.pth")
    shutil.copy(nibabel_data() / "anatomical.nii", tmp_path / "anatomical.nii")
    shutil.copytree(CT_SERIES, tmp_path / "ct_series")
    (tmp_path / "classes.txt").write_text("normal\nabnormal\n", encoding="utf-8")
    shutil.copy(CT_SMALL, tmp_path / "scan.dcm")
    for line in blocks[2][1].strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "featuremaps"
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, (line, result.output)
    heat = np.asarray(Image.open(tmp_path / "cam-out" / "cam_gradcam.png"))
    assert heat.shape == (224, 224, 3)
    assert (tmp_path / "xray.html").stat().st_size > 10_000
    mr = (tmp_path / "mr.html").read_text(encoding="utf-8")
    assert 'id="vol-axial-slider" min="0" max="24"' in mr
    assert 'class="cls">normal<' in mr and 'class="cls">abnormal<' in mr  # --classes named the 3-D model's outputs
    assert {p.name for p in (tmp_path / "mr-cam").glob("cam_*.png")} == {
        "cam_gradcam_axial.png", "cam_gradcam_coronal.png", "cam_gradcam_sagittal.png"}
    # maps on a volume: one slice picture per 3-D layer (2 convs, 2 ReLUs, the pooling), 4 channels each at most
    slices = json.loads((tmp_path / "mr-maps" / "slices" / "slices.json").read_text(encoding="utf-8"))
    assert [(s["path"], len(s["channels"])) for s in slices] == [("000_0.png", 4), ("001_1.png", 4),
                                                                ("002_2.png", 4), ("003_3.png", 4), ("004_4.png", 4)]
    assert all((tmp_path / "mr-maps" / "slices" / s["path"]).is_file() for s in slices)
