"""Saving captured maps (FeatureMaps.save / load_maps)."""

from __future__ import annotations

import torch


def test_save_maps_that_share_memory(tmp_path) -> None:
    """A block's output is often its last layer's output (the same tensor): both are saved, and load equal."""
    import featuremaps as fm

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.act = torch.nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    net = torch.nn.Sequential(Block(), torch.nn.Conv2d(4, 2, 1))
    maps = fm.get_feature_maps(net, torch.rand(1, 3, 8, 8), layers=["0", "0.act", "0.conv"])
    path = maps.save(tmp_path / "m.safetensors")
    back = fm.load_maps(path)
    assert list(back) == list(maps)
    for name in maps:
        assert torch.equal(back[name].tensor, maps[name].tensor)
