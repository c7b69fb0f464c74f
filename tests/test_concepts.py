"""Concepts discovered from data: planted answers, streaming, processes, real photos, faithfulness, files, CLI."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import featuremaps as fm
from featuremaps.concepts import PositionSample, nmf, nnls_codes
from featuremaps.concepts.nmf import position_keys
from featuremaps.errors import FeatureMapsError

import atlas_helper


def _planted(n: int = 24, k: int = 4, c: int = 12, side: int = 6, seed: int = 0):
    """A model whose layer "0" outputs exactly H @ W_true at every position (H: the input, sparse, >= 0).

    Both factors have zeros (each concept uses some of the channels, each position shows some of the
    concepts): without zeros in W_true the factorization is not unique (rows sharpened outside the
    cone of W_true, with codes mixed to match, give the same product), so no method could recover it.
    """
    g = torch.Generator().manual_seed(seed)
    w_true = torch.rand(k, c, generator=g) * (torch.rand(k, c, generator=g) < 0.5)
    h = torch.rand(n, k, side, side, generator=g) * (torch.rand(n, k, side, side, generator=g) < 0.35)
    conv = nn.Conv2d(k, c, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w_true.T[:, :, None, None])
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)), h, w_true


def _matched_cosines(found: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The cosines of the best one-to-one matching (over all permutations; K is small)."""
    cos = nn.functional.normalize(found, dim=1) @ nn.functional.normalize(true, dim=1).T
    k = cos.shape[0]
    best = max(itertools.permutations(range(k)), key=lambda p: float(sum(cos[i, p[i]] for i in range(k))))
    return torch.stack([cos[i, best[i]] for i in range(k)])


# --------------------------------------------------------------------------- planted answers


def test_planted_non_negative_mixtures_are_recovered():
    model, h, w_true = _planted()
    concepts = fm.discover_concepts(model, h, "0", n_concepts=4, examples=False, progress=False, batch_size=5)
    assert concepts.components.shape == (4, 12) and bool((concepts.components >= 0).all())
    assert bool((_matched_cosines(concepts.components, w_true) > 0.99).all())
    assert concepts.relative_error < 0.02 and concepts.negative_share == 0.0
    assert concepts.num_images == 24 and concepts.positions == 24 * 36
    # the coefficients of a new input are its planted codes, in the matched order and scale
    maps = fm.get_feature_maps(model, h[:2], layers="0")["0"].tensor
    u = concepts.coefficients(maps)
    rebuilt = torch.einsum("nkhw,kc->nchw", u, concepts.components)
    assert torch.allclose(rebuilt, maps, atol=0.05 * float(maps.abs().max()))


def test_nnls_codes_solve_the_non_negative_least_squares_problem():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(3, 7, generator=g)
    x = torch.rand(20, 7, generator=g)  # not in the cone: some coefficients must be clamped at 0
    u = nnls_codes(x, w, iters=500)
    assert bool((u >= 0).all())
    # KKT conditions: the gradient w.r.t. u is >= 0, and 0 where u > 0
    grad = (u @ w - x) @ w.T
    assert bool((grad > -1e-4).all())
    assert bool((grad[u > 1e-6].abs() < 1e-4).all())


# --------------------------------------------------------------------------- streaming and merging


def test_streaming_over_many_batches_equals_the_factorization_of_all_the_data_at_once():
    model, h, _ = _planted(n=10)
    all_positions = fm.get_feature_maps(model, h, layers="0")["0"].tensor.permute(0, 2, 3, 1).reshape(-1, 12)
    direct, _, err = nmf(all_positions, 4)
    for batch in (1, 3, 10):
        concepts = fm.discover_concepts(model, h, "0", n_concepts=4, examples=False, progress=False,
                                        batch_size=batch, sample_size=10_000)
        assert concepts.sample_size == 360  # every position fits: the sample is the data
        assert torch.allclose(concepts.components, direct, atol=1e-4), batch
        assert abs(concepts.relative_error - err) < 1e-5


def test_the_sample_is_the_smallest_hash_keys_whatever_the_batching_and_merges_exactly():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(13, 3, 5, generator=g)
    keys = position_keys(torch.arange(13), 5)  # computed independently of the sample
    expected = sorted((int(keys[i, p]), i, p) for i in range(13) for p in range(5))[:17]
    for batch in (1, 4, 13):
        s = PositionSample(17, 3)
        for start in range(0, 13, batch):
            s.update(maps[start:start + batch], torch.arange(start, min(13, start + batch)))
        assert list(zip(s.key.tolist(), s.index.tolist(), s.position.tolist())) == expected
        assert torch.equal(s.rows, torch.stack([maps[i, :, p] for _, i, p in expected]))
    a, b = PositionSample(17, 3), PositionSample(17, 3)
    a.update(maps[::2], torch.arange(0, 13, 2))  # two "ranks" with interleaved shards
    b.update(maps[1::2], torch.arange(1, 13, 2))
    merged = PositionSample.from_state(b.state(), torch.device("cpu")).merge(a)
    assert torch.equal(merged.rows, s.rows) and merged.seen == 65


def test_two_process_torchrun_gives_the_same_concepts_as_one_process(tmp_path):
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=8)
    args = ["concepts", str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layer", "4",
            "--n-concepts", "3", "--k", "2", "--batch-size", "2", "--quiet", "--sample-size", "200"]
    single = atlas_helper.run_helper([*args, "-o", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    multi = atlas_helper.run_helper([*args, "-o", str(tmp_path / "two")], processes=2)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    one, two = fm.load_concepts(tmp_path / "one"), fm.load_concepts(tmp_path / "two")
    assert one.positions == two.positions and one.sample_size == two.sample_size == 200
    assert torch.allclose(one.components, two.components, atol=1e-6)
    assert [e.index for e in one.top_examples(0)] == [e.index for e in two.top_examples(0)]
    assert one.num_images == two.num_images == 8 and [n for n, _ in two.skipped] == ["b/broken.png"]
    assert multi.stdout.count("3 concepts in 4") == 1  # rank 0 reports
    # (torchrun takes "--n" for an abbreviation of its own options: the long spelling reaches the command)


# --------------------------------------------------------------------------- importance and deletion


def test_importance_adds_up_to_the_logit_and_deleting_a_concept_removes_exactly_its_importance():
    model, h, _ = _planted()
    concepts = fm.discover_concepts(model, h, "0", n_concepts=4, examples=False, progress=False)
    x = h[:3]
    ex = concepts.explain(model, x, target=2)
    logits = model(x)[:, 2].detach()
    head = model[3]
    # a global average pool + linear head: gradient x coefficient over the concepts, plus the residual,
    # is the logit minus its bias
    assert torch.allclose(ex.importance.sum(1) + ex.residual, logits - head.bias[2].detach(), atol=1e-4)
    assert float(ex.residual.abs().max()) < 0.05 * float(ex.importance.abs().sum(1).max())
    # and the head is linear, so removing concept j lowers the score by exactly its importance
    for j in range(4):
        assert torch.allclose(ex.delete([j]), logits - ex.importance[:, j], atol=1e-4)
    # the gradient w.r.t. a concept's coefficients is the same at every position: W_head[2] . w_k / positions
    per_position = (head.weight[2].detach() @ concepts.components.T) / 36
    assert torch.allclose(ex.gradients, per_position.expand(3, 4) * 36, atol=1e-5)


def test_sobol_indices_of_a_score_linear_in_the_coefficients_are_the_squared_importance_shares():
    model, h, _ = _planted()
    concepts = fm.discover_concepts(model, h, "0", n_concepts=4, examples=False, progress=False)
    ex = concepts.explain(model, h[:2], target=0)
    # the head is linear: f(m) = y - sum_k (1 - m_k) I_k, so Var f = sum_k I_k^2 / 12 and S_T,k = I_k^2 / sum I^2
    expected = ex.importance ** 2 / (ex.importance ** 2).sum(1, keepdim=True)
    sobol = ex.sobol(designs=256)
    assert sobol.shape == (2, 4) and torch.allclose(sobol, expected, atol=0.03), (sobol, expected)
    assert torch.equal(sobol, ex.sobol(designs=256))  # deterministic for a seed


def _photo_folder(root: Path) -> Path:
    """The shipped sample photos and crops of them (corners and centre), as PNG files."""
    from PIL import Image

    root.mkdir()
    for path in map(fm.sample_image, fm.sample_images()):
        img = Image.open(path).convert("RGB")
        img.save(root / Path(path).name)
        w, h = img.size
        boxes = [(0, 0, w // 2, h // 2), (w // 2, h // 2, w, h), (w // 4, h // 4, 3 * w // 4, 3 * h // 4)]
        for j, box in enumerate(boxes):
            img.crop(box).save(root / f"{Path(path).stem}-{j}.png")
    return root


@pytest.fixture(scope="module")
def photo_concepts(tmp_path_factory):
    loaded = fm.load_model()
    folder = _photo_folder(tmp_path_factory.mktemp("photos") / "images")
    concepts = fm.discover_concepts(loaded, folder, "_act_head", n_concepts=6, top_k=3, progress=False, batch_size=8)
    return loaded, folder, concepts


def test_real_photos_give_concepts_heatmaps_in_the_image_size_and_finite_importance(photo_concepts):
    loaded, folder, concepts = photo_concepts
    n_images = len(list(folder.iterdir()))
    assert concepts.n_concepts == 6 and concepts.num_images == n_images
    assert concepts.positions == n_images * 49 and concepts.negative_share == 0.0  # after ReLU6
    assert all(len(concepts.top_examples(k)) == 3 for k in range(6))
    assert concepts.patch(0, 0).size[0] > 0
    x = torch.stack([loaded.preprocess(fm.load_image(fm.sample_image(n)))[0] for n in ("cat", "coffee")])
    maps = concepts.heatmaps(loaded.model, x)
    assert maps.shape == (2, 6, 224, 224) and bool((maps >= 0).all())
    ex = concepts.explain(loaded.model, x)
    assert ex.importance.shape == (2, 6) and bool(torch.isfinite(ex.importance).all())
    logits = loaded.model(x).detach()
    bias = loaded.model._fc.bias.detach()
    predicted = logits.argmax(1)
    # the default model ends in global average pooling + a linear layer: the shares add up exactly
    assert torch.allclose(ex.importance.sum(1) + ex.residual, logits[torch.arange(2), predicted] - bias[predicted],
                          atol=1e-3)


def test_importance_ordered_concept_deletion_beats_random_order(photo_concepts):
    loaded, _, concepts = photo_concepts
    x = torch.stack([loaded.preprocess(fm.load_image(fm.sample_image(n)))[0] for n in fm.sample_images()])
    ex = concepts.explain(loaded.model, x)
    ours = ex.deletion_curve("importance").mean(1)
    chance = torch.stack([ex.deletion_curve("random", seed=s).mean(1) for s in range(4)]).mean(0)
    assert bool((ours < chance).all()), (ours, chance)
    assert torch.allclose(ex.deletion_curve("importance")[:, 0], ex.target_scores, atol=1e-3)


def test_token_layers_and_1d_layers_work_through_the_layouts():
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=5).eval()
    x = torch.randn(6, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_1.mlp.1"  # the GELU inside the MLP: tokens (N, 17, 32), mostly >= 0
    concepts = fm.discover_concepts(vit, x, layer, n_concepts=3, top_k=2, progress=False, receptive="none")
    assert concepts.components.shape == (3, 32) and concepts.positions == 6 * 16  # grid tokens, not the class token
    assert all(0 <= e.position[0] < 4 and 0 <= e.position[1] < 4 for e in concepts.top_examples(0))
    assert concepts.heatmaps(vit, x[:2]).shape == (2, 3, 32, 32)
    ex = concepts.explain(vit, x[:2], target=1)
    total = fm.channel_relevance(vit, x[:2], layer, target=1).scores.sum(1)
    assert torch.allclose(ex.importance.sum(1) + ex.residual, total, atol=1e-5)
    net1 = nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(6, 3)).eval()
    x1 = torch.randn(5, 2, 40)
    c1 = fm.discover_concepts(net1, x1, "1", n_concepts=2, top_k=2, progress=False)
    assert c1.positions == 5 * 40 and c1.heatmaps(net1, x1[:1]).shape == (1, 2, 40)
    assert all(e.position[0] == 0 for e in c1.top_examples(1))  # 1-D maps: positions (0, x)
    ex1 = c1.explain(net1, x1[:2], target=0)
    assert torch.allclose(ex1.delete([0, 1]), ex1.target_scores - ex1.importance.sum(1), atol=1e-5)  # linear head


# --------------------------------------------------------------------------- files, pages, errors, CLI


def test_save_and_load_round_trip_and_the_output_folder_rules(photo_concepts, tmp_path):
    _, _, concepts = photo_concepts
    out = concepts.save(tmp_path / "c")
    assert {p.name for p in out.iterdir()} == {".featuremaps", "concepts.json", "concepts.safetensors", "index.html",
                                               "atlas"}
    back = fm.load_concepts(out)
    assert torch.equal(back.components, concepts.components)
    assert back.layer == concepts.layer and back.info == concepts.info
    assert [e.index for e in back.top_examples(2)] == [e.index for e in concepts.top_examples(2)]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('class="ch"') == 6 and "atlas/patches/000/0." in page and "<script" not in page
    concepts.save(out)  # our own folder: replaced
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FeatureMapsError, match="other files"):
        concepts.save(user)
    assert (user / "notes.txt").read_text() == "mine"
    with pytest.raises(FeatureMapsError, match="not a concepts folder"):
        fm.load_concepts(user)


def test_the_page_passes_the_accessibility_check(photo_concepts, tmp_path):
    pytest.importorskip("playwright")
    import test_report_browser as trb
    from playwright import sync_api

    _, _, concepts = photo_concepts
    out = concepts.save(tmp_path / "c")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=trb.CHROMIUM, args=trb.ARGS)
        try:
            page = browser.new_page()
            page.goto((out / "index.html").as_uri())
            assert trb.axe_violations(page) == []
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        finally:
            browser.close()


def test_bad_requests_name_the_argument():
    model, h, _ = _planted(n=4)
    with pytest.raises(FeatureMapsError, match="n_concepts=0"):
        fm.discover_concepts(model, h, "0", n_concepts=0, progress=False)
    with pytest.raises(FeatureMapsError, match="layer=None"):
        fm.discover_concepts(model, h, None, progress=False)
    with pytest.raises(FeatureMapsError, match="method='pca'"):
        fm.discover_concepts(model, h, "0", method="pca", progress=False)
    with pytest.raises(FeatureMapsError, match="n_concepts=13"):
        fm.discover_concepts(model, h, "0", n_concepts=13, examples=False, progress=False)
    with pytest.raises(FeatureMapsError, match="selects 2 outputs"):
        fm.discover_concepts(model, h, ["0", "1"], n_concepts=2, examples=False, progress=False)
    concepts = fm.discover_concepts(model, h, "0", n_concepts=2, examples=False, progress=False)
    with pytest.raises(FeatureMapsError, match="no top examples"):
        concepts.top_examples(0)
    with pytest.raises(FeatureMapsError, match="out of range"):
        concepts.top_channels(5)


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.rand(4, 6, 6)


def test_the_model_is_left_as_it_was_and_a_users_folder_is_refused_before_any_work(tmp_path):
    model, h, _ = _planted(n=6)
    model.train()
    model[0].weight.requires_grad_(False)
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))  # the user's own hook stays
    concepts = fm.discover_concepts(model, h, "0", n_concepts=2, top_k=2, progress=False)
    concepts.explain(model, h[:2]).deletion_curve("random")
    concepts.heatmaps(model, h[:1])
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad and model[3].weight.grad is None
    assert len(model._forward_pre_hooks) == 1 and not any(m._forward_hooks for m in model.modules())
    user = tmp_path / "user"
    user.mkdir()
    (user / "mine.txt").write_text("x")
    calls.clear()
    with pytest.raises(FeatureMapsError, match="other files"):
        fm.discover_concepts(model, h, "0", n_concepts=2, progress=False, out=user)
    assert calls == [] and (user / "mine.txt").read_text() == "x"
    with pytest.raises(FeatureMapsError, match="discover_concepts needs a map-style dataset"):
        fm.discover_concepts(model, _Stream(), "0", progress=False)


def test_signed_layers_are_factored_by_their_positive_part():
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 5, 1))
    x = torch.randn(6, 3, 4, 4, generator=g)
    concepts = fm.discover_concepts(model, x, "0", n_concepts=2, examples=False, progress=False)
    a = model(x).detach()
    assert abs(concepts.negative_share - float(a.clamp(max=0).abs().sum() / a.abs().sum())) < 1e-5
    assert bool((concepts.components >= 0).all())


def test_cli_writes_a_concepts_folder_and_refuses_a_users_folder(tmp_path):
    from featuremaps.cli import cli

    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=4)
    base = ["concepts", str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layer", "4",
            "--n", "2", "--k", "2", "--quiet"]
    result = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 concepts in 4 from 4 images" in result.output
    assert fm.load_concepts(tmp_path / "out").n_concepts == 2
    user = tmp_path / "user"
    user.mkdir()
    (user / "a.txt").write_text("x")
    result = CliRunner().invoke(cli, [*base, "-o", str(user)])
    assert result.exit_code == 2 and "other files" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, [*base[:6], "--n", "2", "-o", str(tmp_path / "o2")])  # no --layer
    assert result.exit_code == 2 and "--layer" in result.output


def test_progress_callable_sees_both_passes_and_done_reaches_total():
    """discover_concepts reports the sampling pass ("concepts") and the examples pass ("concept examples")."""
    calls = []
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
    fm.discover_concepts(net, torch.rand(8, 3, 10, 10), layer="1", n_concepts=2, batch_size=3,
                         progress=lambda stage, done, total: calls.append((stage, done, total)))
    # 8 images in batches of 3, in each pass: 0 before the first batch, then 3, 6, 8 read
    expected = [0, 3, 6, 8]
    assert [(d, t) for s, d, t in calls if s == "concepts"] == [(d, 8) for d in expected]
    assert [(d, t) for s, d, t in calls if s == "concept examples"] == [(d, 8) for d in expected]
    assert {s for s, _, _ in calls} == {"concepts", "concept examples"}


def _visible_text(html: str) -> str:
    import re

    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    alts = " ".join(re.findall(r'(?:alt|aria-label|data-label)="([^"]*)"', html))
    return re.sub(r"<[^>]+>", " ", html) + " " + alts


def test_the_concept_pages_say_concept_where_the_atlas_pages_say_channel(tmp_path):
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
    data = TensorDataset(torch.rand(6, 3, 12, 12))
    out = fm.discover_concepts(net, data, "1", n_concepts=2, top_k=2, progress=False).save(tmp_path / "c")
    for page in ("index.html", "layers/000.html"):
        text = _visible_text((out / "atlas" / page).read_text(encoding="utf-8"))
        assert "channel" not in text.lower(), page
        assert "concept" in text
    layer = _visible_text((out / "atlas" / "layers" / "000.html").read_text(encoding="utf-8"))
    assert "concept 0" in layer and "concept 1" in layer and "2 concepts" in layer
    # re-saved after loading: still concepts
    again = fm.load_concepts(out).save(tmp_path / "again")
    assert "concept 1" in _visible_text((again / "atlas" / "layers" / "000.html").read_text(encoding="utf-8"))
    # a plain atlas of the same layer keeps its channels
    atlas = fm.build_atlas(net, data, layers="1", k=2, progress=False).save(tmp_path / "atlas")
    plain = _visible_text((atlas / "layers" / "000.html").read_text(encoding="utf-8"))
    assert "channel 4" in plain and "5 channels" in plain and "concept" not in plain


class _SharedReLU(nn.Module):
    """One ReLU module that runs twice: its calls are the layers ``act`` (first) and ``act:1`` (second)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def first(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.c1(x))

    def rest(self, a0: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.c2(a0)).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(x))


@pytest.mark.parametrize("call", [0, 1])
def test_concepts_of_one_call_of_a_module_that_runs_twice_explain_that_call(call):
    from featuremaps.concepts import concept_maps

    net = _SharedReLU().eval()
    data = torch.rand(6, 3, 10, 10)
    found = fm.discover_concepts(net, data, f"act:{call}", n_concepts=2, top_k=2, progress=False)
    assert found.layer == ("act" if call == 0 else "act:1") and found.selector == f"act:{call}"
    x = torch.rand(2, 3, 10, 10)
    # that call's activations by hand, as the leaf of the score's graph
    a0 = net.first(x).detach()
    acts = (a0 if call == 0 else torch.relu(net.c2(a0))).detach().requires_grad_(True)
    out = net.rest(acts) if call == 0 else net.fc(acts.mean((2, 3)))
    # the heatmaps, coefficients and top examples are that call's
    assert torch.allclose(found.heatmaps(net, x), concept_maps(acts.detach(), found.components), atol=1e-6)
    ex = found.explain(net, x, target=[0, 2])
    assert torch.allclose(ex.coefficients, concept_maps(acts.detach(), found.components), atol=1e-6)
    top = found.top_examples(0)[0]
    with torch.no_grad():
        expected = concept_maps(torch.relu(net.c2(net.first(data))) if call else net.first(data), found.components)
    assert top.score == pytest.approx(float(expected[:, 0].amax()), rel=1e-5)
    # single-channel concepts: importance is gradient x activation of that call, summed over the map (autograd)
    channels = [1, 3]
    w = torch.zeros(2, int(acts.shape[1]))
    w[[0, 1], channels] = 1.0
    one_hot = dataclasses.replace(found, components=w)
    picked = torch.stack([out[0, 0], out[1, 2]]).sum()
    g = torch.autograd.grad(picked, acts)[0]
    ex = one_hot.explain(net, x, target=[0, 2])
    assert torch.allclose(ex.coefficients, acts.detach()[:, channels], atol=1e-6)
    by_hand = (g[:, channels] * acts.detach()[:, channels]).sum((2, 3))
    assert torch.allclose(ex.importance, by_hand, rtol=1e-4, atol=1e-7)
    # the bare module name selects both calls: a one-line error naming them
    with pytest.raises(FeatureMapsError, match=r"selects 2 outputs \(act, act:1\)"):
        fm.discover_concepts(net, data, "act", n_concepts=2, examples=False, progress=False)
