"""The one layer grammar (:mod:`featuremaps.layers`): each form on a model whose names we know by hand, the
same selector giving the same layers to capture, ``FeatureMaps.select``, ``visualize``, ``layouts=`` and the
CAMs, and the one-line errors for what matches nothing."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.attribution import GradCAM
from featuremaps.errors import LayerNotFoundError
from featuremaps.layers import LayerRef, Selection, select


class Pair(nn.Module):
    """A leaf whose output is a tuple: ``(x, -x)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, -x


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Net(nn.Module):
    """``act`` runs twice (``act``, ``act:1``); ``pair`` returns two maps (``pair[0]``, ``pair[1]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.stages = nn.Sequential(Block(), Block())
        self.pair = Pair()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        a, b = self.pair(self.stages(x))
        return self.head(self.act(a + 2 * b).mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8)


@pytest.fixture(scope="module")
def everything(net: Net, x: torch.Tensor) -> fm.FeatureMaps:
    """Every output of every module, containers included."""
    return fm.get_feature_maps(net, x, layers=lambda name, module: True)


def _refs(net: nn.Module, selector: object) -> list[str]:
    return [r.selector for r in select(net, selector)]


# --------------------------------------------------------------------------- each form, known by hand


def test_each_form_selects_the_layers_named_by_hand(net: Net) -> None:
    assert _refs(net, "act") == ["act"]
    assert _refs(net, "act:1") == ["act:1"]
    assert _refs(net, "pair[1]") == ["pair[1]"]
    assert _refs(net, "act:1[0]") == ["act:1[0]"]
    assert _refs(net, "stages.*.conv") == ["stages.0.conv", "stages.1.conv"]
    assert _refs(net, "stages.[01]") == ["stages.0", "stages.1"]  # a glob's [..] is a character class
    assert _refs(net, r"re:^stages\.\d$") == ["stages.0", "stages.1"]
    assert _refs(net, "blocks") == ["stages.0", "stages.1"]
    assert _refs(net, nn.Conv2d) == ["stem", "stages.0.conv", "stages.1.conv"]
    assert _refs(net, (nn.Linear, Pair)) == ["pair", "head"]
    assert _refs(net, net.stages[1].act) == ["stages.1.act"]
    assert _refs(net, lambda name, module: name.endswith("act")) == ["act", "stages.0.act", "stages.1.act"]
    assert _refs(net, "all") == [
        "stem", "act", "stages.0.conv", "stages.0.act", "stages.1.conv", "stages.1.act", "pair", "head"
    ]
    # a list: the union in model order, each layer once, a whole module absorbing its parts
    assert _refs(net, ["head", "stem", "act:1", "act:1", "pair[0]", "pair"]) == ["stem", "act:1", "pair", "head"]
    assert _refs(net, []) == []


def test_a_selection_is_a_small_immutable_value(net: Net) -> None:
    sel = select(net, ["pair[1]", "act:1", "stem"])
    assert isinstance(sel, Selection) and len(sel) == 3
    assert sel.names == ("stem", "act", "pair")
    assert list(sel) == [LayerRef("stem"), LayerRef("act", call=1), LayerRef("pair", key="[1]")]
    assert [r.module for r in sel] == [net.stem, net.act, net.pair]
    assert sel.modules == {"stem": net.stem, "act": net.act, "pair": net.pair}
    assert sel.calls == {"stem": None, "act": frozenset({1}), "pair": None}
    assert sel.explicit == {"stem", "act", "pair"}
    assert sel.matches("act:1", "ReLU") and not sel.matches("act") and not sel.matches("act:1", "Conv2d")
    assert sel.matches("pair[1]") and not sel.matches("pair[0]") and sel.matches("stem")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.refs = ()  # type: ignore[misc]
    assert select(net, sel) is sel  # a Selection of this model is a selector that selects itself
    assert fm.resolve_layers(net, ["pair[1]", "act:1", "stem"]) == sel  # the old name, the same answer


def test_the_default_selection_is_every_spatial_leaf_output(net: Net, x: torch.Tensor) -> None:
    sel = select(net, None)
    assert sel.spatial_only and "head" in sel.names and "stages" not in sel.names
    maps = fm.get_feature_maps(net, x)
    assert list(maps) == [
        "stem", "act", "stages.0.conv", "stages.0.act", "stages.1.conv", "stages.1.act", "pair[0]", "pair[1]",
        "act:1",
    ]  # head's (N, 2) is no image map; containers are no leaves


# --------------------------------------------------------------------------- capture takes it


def test_capture_keeps_only_the_call_and_the_tensor_selected(net: Net, x: torch.Tensor) -> None:
    assert list(fm.get_feature_maps(net, x, layers="act")) == ["act", "act:1"]
    assert list(fm.get_feature_maps(net, x, layers="act:1")) == ["act:1"]
    assert list(fm.get_feature_maps(net, x, layers="pair")) == ["pair[0]", "pair[1]"]
    only = fm.get_feature_maps(net, x, layers="pair[1]")
    assert list(only) == ["pair[1]"]
    first = fm.get_feature_maps(net, x, layers="pair[0]")["pair[0]"].tensor
    assert torch.equal(only["pair[1]"].tensor, -first)  # Pair returns (x, -x): the second tensor, not the first
    with pytest.raises(LayerNotFoundError, match=r"layers='act\[0\]': the output of act is one tensor, with "
                       r"nothing at \[0\]$"):  # act returns a tensor, which has no [0]: never a silent nothing
        fm.get_feature_maps(net, x, layers="act[0]")
    with pytest.raises(LayerNotFoundError, match=r"the output of pair holds the tensors \[0\], \[1\], with nothing "
                       r"at \[2\]"):
        fm.get_feature_maps(net, x, layers=["pair[2]", "stem"])


def test_an_output_key_that_names_no_tensor_says_what_the_text_matches_as_a_glob() -> None:
    # "_blocks.1[45]" reads as tensor [45] of _blocks.1; a user who meant the glob gets the names and a regex
    net = nn.Sequential(*[nn.Conv2d(2, 2, 1) for _ in range(16)]).eval()
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(LayerNotFoundError) as caught:
        fm.get_feature_maps(net, x, layers="1[45]")
    message = str(caught.value)
    assert "the output of 1 is one tensor, with nothing at [45]" in message
    assert "would match the modules 14, 15" in message and "\n" not in message
    regex = message.rsplit("write ", 1)[1].strip("'")
    assert list(fm.get_feature_maps(net, x, layers=regex)) == ["14", "15"]  # the advice selects what the glob meant
    with pytest.raises(LayerNotFoundError, match=r"would match the module 10: to mean it, name it or write"):
        fm.get_feature_maps(net, x, layers="1[0]")
    with pytest.raises(LayerNotFoundError) as caught:  # no module matches as a glob: no such advice
        fm.get_feature_maps(net, x, layers="1[7]")
    assert "glob" not in str(caught.value)
    # a key-less selection of a module whose output holds no tensor stays quiet, as before

    class Nothing(nn.Module):
        def forward(self, x: torch.Tensor) -> None:
            return None

    class WithNothing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.nothing = nn.Conv2d(2, 2, 1), Nothing()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.nothing(x)
            return self.conv(x)

    assert list(fm.get_feature_maps(WithNothing().eval(), x, layers="all")) == ["conv"]


def test_layouts_keys_are_selectors(net: Net, x: torch.Tensor) -> None:
    maps = fm.get_feature_maps(net, x, layers=["pair", "act"], layouts={"pair[1]": "NHWC", "act:1": "NHWC"})
    assert {k: m.layout for k, m in maps.items()} == {
        "act": "NCHW", "pair[0]": "NCHW", "pair[1]": "NHWC", "act:1": "NHWC"
    }
    with pytest.raises(LayerNotFoundError) as info:
        fm.get_feature_maps(net, x, layers="act", layouts={"pairr": "NHWC"})
    assert "layouts= key 'pairr'" in str(info.value) and "closest: pair" in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- captured maps take it too

SELECTORS: list[object] = [
    "act", "act:1", "pair", "pair[1]", "stages.*.conv", r"re:^stages\.\d$", "stages", nn.Conv2d, nn.ReLU,
    (nn.Linear, Pair), lambda name, module: name.endswith("act"), ["head", "stem", "act:1", "pair[0]"],
]  # not "all": on a model every leaf, on captured maps (which cannot tell leaves) every map


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: getattr(s, "__name__", repr(s)))
def test_capture_select_and_matches_agree(net: Net, x: torch.Tensor, everything: fm.FeatureMaps,
                                          selector: object) -> None:
    """The same selector: what capture keeps == what FeatureMaps.select keeps == what Selection.matches keeps."""
    captured = list(fm.get_feature_maps(net, x, layers=selector))
    assert captured, "a selector the test expects to match something"
    assert list(everything.select(selector)) == captured
    sel = select(net, selector)
    assert [k for k, m in everything.items() if sel.matches(k, m.info.module_type)] == captured


@pytest.mark.parametrize("selector", ["act:1", "pair[0]", ["stages.1", "stem"], nn.Conv2d, r"re:^stages\.\d$"],
                         ids=repr)
def test_cams_and_visualize_take_the_same_selection(net: Net, x: torch.Tensor, everything: fm.FeatureMaps,
                                                    selector: object) -> None:
    assert GradCAM(net, layer=selector).layer_names == [str(r) for r in select(net, selector)]
    drawn = fm.visualize(everything, layers=selector, channels=1)
    assert list(drawn) == list(everything.select(selector))


def test_a_cam_computes_on_the_call_it_was_given(net: Net, x: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # this random net may give no positive evidence
        res = GradCAM(net, layer="act:1").explain(x, target=0)
    assert res.layers == ("act:1",) and res.layer_maps["act:1"].shape == (2, 8, 8)
    with pytest.raises(LayerNotFoundError, match="closest: act"):
        GradCAM(net, layer="actt")


def test_types_on_captured_maps_use_the_recorded_class_name(everything: fm.FeatureMaps) -> None:
    convs = everything.select(nn.Conv2d)
    assert list(convs) == ["stem", "stages.0.conv", "stages.1.conv"]
    assert all(m.info.module_type == "Conv2d" for m in convs.values())
    assert list(everything.select(lambda name, lm: lm.info.layout == "NC")) == ["head"]  # (name, LayerMap)
    assert list(everything.select(None)) == list(everything)
    assert list(everything.select("re:\\[1\\]$")) == ["pair[1]"]  # on maps a regex sees the whole key too


def test_what_matches_nothing_is_a_one_line_error_naming_it(net: Net, everything: fm.FeatureMaps) -> None:
    cases = [
        (lambda: select(net, "stemm"), "no layer of Net matches 'stemm'; closest: stem"),
        (lambda: select(net, ["stem", "hed"]), "matches 'hed'; closest: head"),
        (lambda: select(net, nn.Conv3d), "Net has no module of type Conv3d"),
        (lambda: select(net, lambda n, m: False), "selected no layer of Net"),
        (lambda: select(net, "re:("), "not a valid regular expression"),
        (lambda: select(nn.Sequential(nn.ReLU()), "blocks"), "no numbered blocks"),
        (lambda: everything.select("stemm"), "no captured map matches 'stemm'; closest: stem"),
        (lambda: everything.select("act:5"), "no captured map matches 'act:5'"),
        (lambda: everything.select(nn.Conv3d), "no captured map comes from a module of type Conv3d"),
        (lambda: everything.select(net.stem), "cannot select captured maps"),
        (lambda: everything.select("blocks"), "capture with layers='blocks'"),
        (lambda: fm.visualize(everything, layers=["stem", "typo"]), "no captured map matches 'typo'"),
    ]
    for call, message in cases:
        with pytest.raises(LayerNotFoundError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TypeError, match="layers= got int"):
        select(net, 3)


def test_visualize_understands_types_and_regexes_it_used_to_ignore(everything: fm.FeatureMaps) -> None:
    assert list(fm.visualize(everything, layers=nn.ReLU, channels=1)) == [
        "act", "stages.0.act", "stages.1.act", "act:1"
    ]
    assert list(fm.visualize(everything, layers=r"re:^stages\.1\.", channels=1)) == ["stages.1.conv", "stages.1.act"]


def test_list_layers_moved_but_the_old_path_still_works(net: Net) -> None:
    import featuremaps.layers as layers_module
    from featuremaps.listing import list_layers

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = layers_module.list_layers
    assert old is list_layers is fm.list_layers
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert fm.list_layers(net, layers="act:1").column("name") == ["act"]


def test_maps_select_by_type_finds_subclasses_like_the_model_does(tmp_path) -> None:
    """Selecting nn.Conv2d on captured maps includes a Conv2d subclass's maps, as selecting it on the model does."""
    from torch import nn as _nn

    import featuremaps as fm
    from featuremaps.layers import select as _select

    class SameConv(_nn.Conv2d):
        pass

    net = _nn.Sequential(SameConv(3, 4, 3, padding=1), _nn.ReLU(), _nn.Conv2d(4, 2, 1), _nn.BatchNorm2d(2))
    maps = fm.get_feature_maps(net, torch.rand(1, 3, 8, 8), layers="all")
    on_model = list(_select(net, _nn.Conv2d).names)
    assert on_model == ["0", "2"]
    assert list(maps.select(_nn.Conv2d)) == on_model
    assert list(maps.select(SameConv)) == ["0"]
    back = fm.load_maps(maps.save(tmp_path / "m.safetensors"))  # the bases travel with the saved maps
    assert list(back.select(_nn.Conv2d)) == on_model

