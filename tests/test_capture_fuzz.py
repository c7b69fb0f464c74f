"""Property tests of the capture engine on random small architectures.

Each example builds a random network from convolutions, BatchNorm, in-place
ReLU, residual ``out += x``, ``x.mul_()``, an in-place op inside TorchScript,
modules called twice and tuple / dict outputs whose parts are written in
place afterwards, with a random starting state (training flags, frozen
parameters, existing ``.grad``, a user's own hook). The properties:

* the maps equal an independent reference: a plain forward hook that clones
  every output of the same modules, on a copy of the model;
* afterwards every module's training flag, every parameter's
  ``requires_grad`` and ``.grad``, every buffer and every hook dictionary are
  exactly as before;
* both hold in every grad mode (``no_grad``, ``inference_mode``, grad
  enabled, ``keep_graph``), with ``device=`` and with a reducer that keeps a
  view of the live output, in eval mode and in the model's own mode;
* two extractors on one model, entered, called and exited in any order, each
  get only their own layers, computed in their own mode, and the model's
  state comes back after the last exit.

Example counts are small and ``derandomize=True`` makes every run identical.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import featuremaps as fm

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
C = 3  # channels everywhere


def _add_one_(t: torch.Tensor) -> torch.Tensor:
    t.add_(1.0)
    return t


with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still what models use
    _SCRIPTED_ADD = torch.jit.script(_add_one_)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out += x  # in place on the conv's (captured) output
        return out


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(-1.5)  # in place on its input: the previous layer's output


class ScriptAdd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SCRIPTED_ADD(x)  # in place, inside TorchScript


class Pair(nn.Module):
    """A tuple output whose second part is the module's input itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), x


class Named(nn.Module):
    """A dict output whose ``aux`` part is the module's input itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"main": self.conv(x), "aux": x}


def _make(kind: str) -> nn.Module:
    if kind == "conv":
        return nn.Conv2d(C, C, 3, padding=1)
    if kind == "bn":
        bn = nn.BatchNorm2d(C)
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        return bn
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return {"residual": Residual, "scale": Scale, "script": ScriptAdd, "pair": Pair, "dict": Named}[kind]()


KINDS = ["conv", "bn", "relu", "residual", "scale", "script", "pair", "dict"]


class Net(nn.Module):
    """Runs ``blocks`` in ``order`` (an index may repeat: a module called twice)."""

    def __init__(self, kinds: list[str], order: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_make(k) for k in kinds)
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in self.order:
            out = self.blocks[i](x)
            if isinstance(out, tuple):
                a, b = out
                b.relu_()  # writes the tuple's captured part, and the previous layer's output
                x = a + b
            elif isinstance(out, dict):
                out["aux"].mul_(-1.0)
                x = out["main"] + out["aux"]
            else:
                x = out
        return x


@st.composite
def networks(draw: Any) -> tuple[Net, list[str]]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=5))
    order = list(range(len(kinds)))
    reused = draw(st.lists(st.integers(0, len(kinds) - 1), max_size=2))
    for i in reused:  # call some modules a second time, later
        order.insert(draw(st.integers(i + 1, len(order))), i)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = Net(kinds, order)
    names = [n for n, _ in net.named_modules() if n and n != "blocks"]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    # a random starting state: training flags, frozen parameters, existing gradients
    net.train(draw(st.booleans()))
    for m in net.modules():
        if draw(st.integers(0, 3)) == 0:
            m.training = not m.training
    for p in net.parameters():
        choice = draw(st.integers(0, 3))
        if choice == 0:
            p.requires_grad_(False)
        elif choice == 1:
            p.grad = torch.full_like(p, 0.5)
    return net, chosen


# ----------------------------------------------------------------------------- the independent reference


def _clone_tree(out: Any, path: str = "") -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {path: out.detach().clone()}
    if isinstance(out, tuple):
        return {k: v for i, o in enumerate(out) for k, v in _clone_tree(o, f"{path}[{i}]").items()}
    if isinstance(out, dict):
        return {k: v for key, o in out.items() for k, v in _clone_tree(o, f"{path}[{key}]").items()}
    return {}


def reference(model: nn.Module, names: list[str], x: torch.Tensor, eval_mode: bool) -> dict[str, torch.Tensor]:
    """Clone every output of ``names`` with plain forward hooks, on a copy of the model."""
    model = copy.deepcopy(model)
    if eval_mode:
        model.eval()
    seen: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    mods = dict(model.named_modules())

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            base = name if call == 0 else f"{name}:{call}"
            for path, t in _clone_tree(output).items():
                seen[base + path] = t

        return hook

    for n in names:
        mods[n].register_forward_hook(recorder(n))
    with torch.no_grad():
        model(x.clone())
    return seen


# ----------------------------------------------------------------------------- state and hooks


def _hooks(model: nn.Module) -> list[tuple[Any, ...]]:
    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks")
    return [tuple((a, tuple(getattr(m, a, {}).items())) for a in attrs) for m in model.modules()]


def _global_hooks() -> tuple[Any, ...]:
    from torch.nn.modules import module as mm

    return tuple(tuple(getattr(mm, a).items()) for a in dir(mm) if a.startswith("_global_") and a.endswith("hooks"))


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": _hooks(model),
        "global": _global_hooks(),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(a is b for a, b in zip(after["grad"], before["grad"]))
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, v in before["tensors"].items():
        assert torch.equal(after["tensors"][k], v), k
    assert after["hooks"] == before["hooks"]
    assert after["global"] == before["global"]


# ----------------------------------------------------------------------------- properties

GRAD_MODES = ["no_grad", "inference_mode", "enable_grad", "keep_graph"]
OPTIONS = ["none", "device", "reduce_view"]


def _first_channel(t: torch.Tensor, info: Any) -> torch.Tensor:
    return t[:, :1]  # a view of the live output: kept by reference unless the engine protects it


@SETTINGS
@given(net=networks(), grad_mode=st.sampled_from(GRAD_MODES), option=st.sampled_from(OPTIONS),
       eval_mode=st.booleans())
def test_captures_equal_a_clone_every_output_reference_and_leave_no_trace(net, grad_mode, option, eval_mode):
    model, names = net
    x = torch.randn(2, C, 6, 6)
    expected = reference(model, names, x, eval_mode)
    user_calls: list[int] = []
    model.blocks[0].register_forward_hook(lambda m, i, o: user_calls.append(1))  # a hook of the user's own
    before = snapshot(model)
    options: dict[str, Any] = {"eval_mode": eval_mode, "keep_graph": grad_mode == "keep_graph"}
    if option == "device":
        options["device"] = "cpu"
    elif option == "reduce_view":
        options["reduce"] = _first_channel
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(grad_mode, torch.enable_grad)
    with context():
        maps = fm.get_feature_maps(model, x.clone(), layers=names, **options)
    assert sorted(maps) == sorted(expected)
    for key, want in expected.items():
        got = maps[key].raw.detach()
        if option == "reduce_view":
            want = want[:, :1]
        assert got.shape == want.shape, key
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), key
    assert user_calls  # the user's hook ran, and stays
    assert_unchanged(model, before)


@st.composite
def schedules(draw: Any) -> list[tuple[str, str]]:
    """Enter and exit ``a`` and ``b`` once each in any order (nested or not), with calls between."""
    events = draw(st.permutations([("a", "enter"), ("a", "exit"), ("b", "enter"), ("b", "exit")]))
    for w in "ab":  # each exits after it entered
        i, j = events.index((w, "enter")), events.index((w, "exit"))
        if j < i:
            events[i], events[j] = events[j], events[i]
    out: list[tuple[str, str]] = []
    active: list[str] = []
    for who, what in events:
        out.append((who, what))
        if what == "enter":
            active.append(who)
        else:
            active.remove(who)
        if active:
            out += [(w, "call") for w in draw(st.lists(st.sampled_from(sorted(active)), max_size=2))]
    return out


@SETTINGS
@given(schedule=schedules(), eval_a=st.booleans(), eval_b=st.booleans(), seed=st.integers(0, 2**16))
def test_two_extractors_in_any_order_keep_to_themselves(schedule, eval_a, eval_b, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(C, C, 3), _make("bn"), nn.ReLU(inplace=True), nn.Conv2d(C, C, 1)).train()
    before = snapshot(model)
    x = torch.randn(4, C, 6, 6)
    wants = {mode: reference(model, ["1", "3"], x, mode) for mode in (True, False)}
    extractors = {
        "a": fm.FeatureExtractor(model, layers="1", eval_mode=eval_a),
        "b": fm.FeatureExtractor(model, layers="3", eval_mode=eval_b),
    }
    layer = {"a": "1", "b": "3"}
    entered: list[str] = []
    try:
        for who, what in schedule:
            fx = extractors[who]
            if what == "enter":
                fx.__enter__()
                entered.append(who)
            elif what == "exit":
                fx.__exit__(None, None, None)
                entered.remove(who)
            else:
                maps = fx(x)
                assert list(maps) == [layer[who]]
                want = wants[fx.eval_mode][layer[who]]
                assert torch.allclose(maps[layer[who]].tensor, want, atol=1e-5), (who, fx.eval_mode)
            if entered:  # between forwards: the mode of the extractor entered last
                assert model[1].training == (not extractors[entered[-1]].eval_mode)
    finally:
        for who in reversed(entered):
            extractors[who].__exit__(None, None, None)
    assert_unchanged(model, before)
