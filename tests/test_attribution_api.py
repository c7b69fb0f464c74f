"""The attribution package's shared objects: the Faithfulness evaluator, the method kinds, the cam folder format."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.attribution import (
    ActivationCAM,
    AttributionError,
    BaseCAM,
    EigenCAM,
    Faithfulness,
    GradCAM,
    GradientCAM,
    PerturbationCAM,
    ScoreCAM,
    average_drop,
    average_increase,
    deletion_auc,
    faithfulness,
    insertion_auc,
    load_cams,
    road,
    save_cams,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 12, 12, generator=g)


# --------------------------------------------------------------------------- Faithfulness


def test_evaluator_and_functions_agree_exactly() -> None:
    net, (x, heat) = _net(), _batch()
    opts = {"batch_size": 5, "probability": True}
    ev = Faithfulness(net, x, [1, 3], **opts)
    assert torch.equal(ev.deletion_auc(heat, steps=6), deletion_auc(net, x, heat, [1, 3], steps=6, **opts))
    auc, curve = ev.insertion_auc(heat, steps=6, return_curve=True)
    auc_f, curve_f = insertion_auc(net, x, heat, [1, 3], steps=6, return_curve=True, **opts)
    assert torch.equal(auc, auc_f) and torch.equal(curve, curve_f)
    assert torch.equal(ev.average_drop(heat, reduction="none"),
                       average_drop(net, x, heat, [1, 3], reduction="none", **opts))
    assert torch.equal(ev.average_increase(heat), average_increase(net, x, heat, [1, 3], **opts))
    r, r_f = ev.road(heat, percentiles=(25, 75)), road(net, x, heat, [1, 3], percentiles=(25, 75), **opts)
    assert r.morf is not None and r_f.morf is not None
    assert torch.equal(r.morf, r_f.morf) and torch.equal(r.combined, r_f.combined)
    every, every_f = ev.evaluate(heat, steps=6, percentiles=(50,)), faithfulness(net, x, heat, [1, 3], steps=6,
                                                                              percentiles=(50,), **opts)
    assert every.keys() == every_f.keys()
    assert all(torch.equal(every[k], every_f[k]) for k in every)


def test_the_unperturbed_forward_runs_once_for_several_metrics() -> None:
    net, (x, heat) = _net(), _batch()
    unperturbed = []
    net.register_forward_hook(lambda m, args, out: unperturbed.append(torch.equal(args[0], x)))
    ev = Faithfulness(net, x)
    ev.deletion_auc(heat, steps=4)
    ev.insertion_auc(heat, steps=4)
    ev.average_drop(heat)
    assert sum(unperturbed) == 1
    # each function runs its own (what the evaluator saves)
    unperturbed.clear()
    deletion_auc(net, x, heat, steps=4)
    average_drop(net, x, heat)
    assert sum(unperturbed) == 2


def test_evaluator_resolves_the_top_class_once_and_checks_heatmaps() -> None:
    net, (x, heat) = _net(), _batch()
    ev = Faithfulness(net, x)
    with torch.no_grad():
        top = net(x).argmax(1)
    assert torch.equal(ev.target.classes, top)
    assert torch.allclose(ev.base, net(x).softmax(1).gather(1, top[:, None])[:, 0].detach())
    with pytest.raises(AttributionError, match="heatmap has shape"):
        ev.deletion_auc(torch.rand(3, 12, 12))
    with pytest.raises(AttributionError, match="batch_size"):
        Faithfulness(net, x, batch_size=0)


# --------------------------------------------------------------------------- kinds


def test_each_method_subclasses_its_kind() -> None:
    classes = {"gradient": GradientCAM, "activation": ActivationCAM, "perturbation": PerturbationCAM}
    for name in fm.cam_methods():
        cls = fm.get_cam(name)
        assert issubclass(cls, classes[cls.kind]), name
        assert sum(issubclass(cls, k) for k in classes.values()) == 1, name


def test_a_base_subclass_without_gradients_is_an_activation_method() -> None:
    class MeanMap(BaseCAM):
        uses_gradients = False

        def combine(self, a, g, ctx):  # type: ignore[no-untyped-def]
            return a.mean(1)

    class Declared(BaseCAM):
        uses_gradients = False
        kind = "perturbation"

    assert MeanMap.kind == "activation" and Declared.kind == "perturbation" and BaseCAM.kind == "gradient"
    with torch.no_grad():  # an activation method runs without gradients
        assert MeanMap(_net(), layer="1")(_batch()[0], target=0).shape == (2, 12, 12)


def test_gradient_override_gets_the_gradients_of_the_target() -> None:
    net, (x, _) = _net(), _batch()

    class Grad(GradientCAM):
        def gradient_map(self, a, g, ctx):  # type: ignore[no-untyped-def]
            return g.sum(1)

    res = Grad(net, layer="1", normalize=False, relu=False).explain(x, target=2)
    # the head is GAP + linear: dy/dA_c at every position is W[2, c] / (H W)
    expected = net[4].weight[2].sum().detach() / 144
    assert torch.allclose(res.layer_maps["1"], expected.expand(2, 12, 12), atol=1e-7)


# --------------------------------------------------------------------------- the cam folder


def test_save_and_load_round_trip(tmp_path) -> None:
    net, (x, _) = _net(), _batch()
    results = {m.name: m(net, layer="1").explain(x, target=1) for m in (GradCAM, EigenCAM)}
    paths = save_cams(tmp_path, results, model="tiny", image="two.png", skipped=["cam"],
                      predictions=[(1, "one", 0.5), (3, "three", 0.25)],
                      metrics={"gradcam": {"deletion_auc": torch.tensor(0.1234567)}})
    assert [p.name for p in paths] == ["cams.safetensors", "predictions.txt", "metrics.json"]
    saved = load_cams(tmp_path)
    assert saved.methods == ["gradcam", "eigencam"] and saved.target == 1 and saved.class_name == "class 1"
    assert (saved.model, saved.image, saved.skipped) == ("tiny", "two.png", ["cam"])
    assert saved.predictions == [(1, "one", 0.5), (3, "three", 0.25)]
    assert saved.metrics == {"gradcam": {"deletion_auc": 0.123457}}
    for name, res in results.items():
        back = saved[name]
        assert torch.equal(back.heatmap, res.heatmap) and back.layers == res.layers == ("1",)
        assert torch.equal(back.layer_maps["1"], res.layer_maps["1"])
        assert back.classes is not None and back.classes.tolist() == [1, 1]
        assert bool(back.scores.isnan().all())  # the file keeps no scores
    assert json.loads((tmp_path / "metrics.json").read_text())["target"] == 1


def test_save_records_no_target_when_samples_differ_and_load_refuses_other_folders(tmp_path) -> None:
    net, (x, _) = _net(), _batch()
    res = GradCAM(net, layer="1").explain(x, target=[0, 2])
    assert [p.name for p in res.save(tmp_path / "a")] == ["cams.safetensors"]
    back = load_cams(tmp_path / "a")["gradcam"]
    assert load_cams(tmp_path / "a").target is None and back.classes is None
    with pytest.raises(KeyError, match="holds gradcam"):
        load_cams(tmp_path / "a")["eigencam"]
    with pytest.raises(AttributionError, match="holds no cams.safetensors"):
        load_cams(tmp_path / "missing")
    from safetensors.torch import save_file

    (tmp_path / "b").mkdir()
    save_file({"t": torch.zeros(1)}, str(tmp_path / "b" / "cams.safetensors"), metadata={"format": "other"})
    with pytest.raises(AttributionError, match="not a featuremaps-cam/1 file"):
        load_cams(tmp_path / "b")
    with pytest.raises(AttributionError, match="results is empty"):
        save_cams(tmp_path / "c", {})


# --------------------------------------------------------------------------- several methods, one pass


@pytest.mark.filterwarnings("ignore:.*zero everywhere")
@pytest.mark.parametrize("layer", ["1", "auto", ["0", "1"]])
def test_cams_equal_separate_calls(layer) -> None:
    net, (x, _) = _net(), _batch()
    names = fm.cam_methods()
    shared = fm.cams(net, x, names, target=[2, 1], layer=layer)
    assert list(shared) == names
    for name in names:
        alone = fm.create_cam(name, net, layer=layer).explain(x, target=[2, 1])
        got = shared[name]
        assert got.method == name and got.layers == alone.layers, name
        assert torch.equal(got.heatmap, alone.heatmap), name
        assert all(torch.equal(got.layer_maps[k], alone.layer_maps[k]) for k in alone.layers), name
        assert torch.equal(got.scores, alone.scores) and got.classes is not None and got.classes.tolist() == [2, 1]


def test_cams_run_one_forward_for_several_methods() -> None:
    net, (x, _) = _net(), _batch()
    forwards = []
    net[0].register_forward_hook(lambda *a: forwards.append(1))
    fm.cams(net, x, ["gradcam", "gradcam++", "hirescam", "eigencam", "cam"], target=0, layer="1")
    assert len(forwards) == 1
    forwards.clear()
    for name in ("gradcam", "eigencam"):
        fm.create_cam(name, net, layer="1").explain(x, target=0)
    assert len(forwards) == 2


def test_cams_take_instances_with_their_own_options_and_refuse_mismatched_ones() -> None:
    net, (x, _) = _net(), _batch()
    eigen = EigenCAM(net, layer="1", sign="auto")
    got = fm.cams(net, x, ["gradcam", eigen, ScoreCAM(net, layer="1", batch_size=3)], layer="1")
    assert torch.equal(got["eigencam"].heatmap, EigenCAM(net, layer="1", sign="auto")(x))
    with pytest.raises(AttributionError, match="differs from GradCAM in refs"):
        fm.cams(net, x, ["gradcam", EigenCAM(net, layer="0")], layer="1")
    with pytest.raises(AttributionError, match="in model"):
        fm.cams(net, x, ["gradcam", EigenCAM(_net(), layer="1")], layer="1")
    with pytest.raises(AttributionError, match="twice"):
        fm.cams(net, x, ["gradcam", "grad-cam"], layer="1")
    with torch.no_grad(), pytest.raises(fm.GradientsDisabledError):
        fm.cams(net, x, ["eigencam", "gradcam"], layer="1")
    with torch.no_grad():  # activation methods alone need no gradients
        assert fm.cams(net, x, ["eigencam", "cam"], layer="1")["cam"].heatmap.shape == (2, 12, 12)


def test_cams_lenient_leaves_out_a_method_that_does_not_apply() -> None:
    torch.manual_seed(0)
    mlp_head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))  # not GAP + linear: CAM is undefined
    x = _batch()[0]
    with pytest.raises(AttributionError, match="global-average-pool"):
        fm.cams(mlp_head, x, ["gradcam", "cam"], layer="1")
    got = fm.cams(mlp_head, x, ["gradcam", "cam", "eigencam"], layer="1", lenient=True)
    assert list(got) == ["gradcam", "eigencam"] and list(got.skipped) == ["cam"]
    assert "global-average-pool" in str(got.skipped["cam"])
    assert torch.equal(got["gradcam"].heatmap, GradCAM(mlp_head, layer="1")(x))
