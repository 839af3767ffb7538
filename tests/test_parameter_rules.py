"""One owner per parameter rule, and every consumer compared against it.

Method parameter facts are owned by ``core.methods`` (checked against mergekit's own specs);
resolution by ``core.parameters`` (checked against mergekit's setting evaluation); validation,
the pure edits, the curve series, the curve editor, ``merger-gui plan`` and the engine must
agree with them.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merger_gui.cli.plan_command import StageView
from merger_gui.core import parameter_edits as edits
from merger_gui.core.curves import CurveTarget, curve_layout, curve_targets, stage_curve_series
from merger_gui.core.donor import TensorInfo
from merger_gui.core.inspect import donor_from_config
from merger_gui.core.methods import METHODS, method_spec
from merger_gui.core.parameters import Scope, resolve_parameter, scope_chain, slice_position
from merger_gui.core.plan import StagePlan, filtered_name, plan_stage
from merger_gui.core.recipe import FilterRule, ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape, donor_config, donor_tensor_shapes
from merger_gui.core.validation import validate_recipe

RULES = (
    FilterRule((0.75, 0.25), "self_attn"),
    FilterRule((0.1, 0.9, 0.4), "mlp"),
    FilterRule(0.3, "lm_head"),
    FilterRule((0.5, 0.6)),
)


def donor(name: str, layers: int = 6):
    shape = DonorShape(num_layers=layers)
    tensors = tuple(TensorInfo(n, s, "F16") for n, s in donor_tensor_shapes(shape).items())
    return donor_from_config(name, "folder", donor_config(shape), tensors)


DONORS = {"a": donor("a"), "b": donor("b"), "c": donor("c", 8)}


def slices_stage() -> Stage:
    """slerp over two slices (the second shorter than its first source), slice 2 overriding t for mlp."""
    slices = (
        Slice((SliceSource("a", (0, 4)), SliceSource("b", (0, 4)))),
        Slice((SliceSource("a", (2, 6)), SliceSource("c", (3, 6))),
              parameters=Parameters({"t": (FilterRule(0.2, "mlp"),)})),
    )
    return Stage("slerp", slices=slices, base_model="a", parameters=Parameters({"t": RULES}))


def models_stage() -> Stage:
    """task_arithmetic in the ``models:`` form, the base not listed, weights as rule lists."""
    models = (ModelEntry("b", Parameters({"weight": RULES, "density": (0.2, 0.8)})),
              ModelEntry("c", Parameters({"weight": 0.4})))
    return Stage("task_arithmetic", models=models, base_model="a", parameters=Parameters({"density": 0.5}))


# --- facts: core.methods against mergekit and every consumer ----------------------------------

KINDS = {"bool": "bool", "int": "int", "float": "float", "Optional": "float"}


@pytest.mark.mergekit
def test_method_specs_equal_mergekit_specs():
    pytest.importorskip("mergekit")
    import mergekit.merge_methods  # noqa: F401  (registers the methods)
    from mergekit.merge_methods.base import ParameterScope
    from mergekit.merge_methods.registry import registered_methods

    theirs = {m.spec.name: m.spec for m in registered_methods()}
    assert set(METHODS) <= set(theirs)
    for name, spec in METHODS.items():
        expected = {p.name: (None if p.required else p.default, p.scope, getattr(p.value_type, "__name__", "")) for p in
                    theirs[name].parameters}
        assert {p.name for p in spec.parameters} == set(expected), name
        for p in spec.parameters:
            default, scope, kind = expected[p.name]
            assert p.default_value == default and type(p.default_value) is type(default), (name, p.name)
            assert p.shared == (scope == ParameterScope.SHARED), (name, p.name)
            assert p.non_base == (scope == ParameterScope.NON_BASE), (name, p.name)
            assert p.kind == KINDS[kind], (name, p.name)


def _findings(method: str, name: str, value) -> set[str]:
    stage = Stage(method, slices=(Slice((SliceSource("a", (0, 2)), SliceSource("b", (0, 2)))),), base_model="a",
                  parameters=Parameters({name: value}))
    return {f.code for f in validate_recipe(Recipe((stage,)), {}) if f.key == f"parameters.{name}"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_validation_checks_the_spec_kind_and_range(method):
    for p in METHODS[method].parameters:
        if p.kind == "bool":
            assert "not-a-boolean" in _findings(method, p.name, 0.5)
            assert "not-a-boolean" not in _findings(method, p.name, True)
            continue
        low, high = p.valid
        if math.isfinite(high):
            assert "value-out-of-range" in _findings(method, p.name, high + 1)
            assert "value-out-of-range" not in _findings(method, p.name, high)
        if math.isfinite(low):
            assert "value-out-of-range" in _findings(method, p.name, low - 1)
            assert "value-out-of-range" not in _findings(method, p.name, low)
        if p.kind == "int":
            assert "not-a-whole-number" in _findings(method, p.name, 2.5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_curve_edits_clamp_to_the_spec_edit_bounds(method):
    for p in METHODS[method].curve_parameters:
        stage = Stage(method, parameters=Parameters({p.name: 0.0}))
        low, high = p.edit
        assert edits.value_bounds(method, p.name) == (low, high)
        assert edits.set_curve_point(stage, edits.TOP_LEVEL, p.name, 0, 0, high + 5).parameters[p.name] == high
        assert edits.set_curve_point(stage, edits.TOP_LEVEL, p.name, 0, 0, low - 5).parameters[p.name] == low


def test_settings_and_curves_split_the_spec_parameters():
    for spec in METHODS.values():
        assert set(spec.settings) | set(spec.curve_parameters) >= set(spec.shared_parameters)
        assert not set(spec.settings) & set(spec.curve_parameters)
        assert all(p.help for p in spec.parameters), spec.name
    assert method_spec("nearswap").parameter("t").edit == (0.0, 0.01)  # a distance, drawn on its own scale
    assert not method_spec("ram").parameter("epsilon").curve  # a threshold, a setting


def _merge_with(method: str, shared: dict, per_model: list[dict]):
    """``method``'s merge of three (or two) fixed random tensors, the first the base where it needs one."""
    import torch

    from merger_gui.engine.methods import merge_tensors

    spec = METHODS[method]
    models = ["a", "b", "c"][:len(per_model)]
    base = "a" if spec.needs_base or method in ("nuslerp", "multislerp") else None
    tensors = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(len(models))]
    return merge_tensors(method, tensors, models, base, shared, per_model, tensor_name="x.weight",
                         generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_engine_defaults_are_the_spec_defaults(method):
    """Leaving a parameter out of the engine's inputs gives the same tensor as the spec's default."""
    torch = pytest.importorskip("torch")
    spec = METHODS[method]
    count = min(spec.max_models or 3, 3)
    required = {p.name: 0.001 if method == "nearswap" else 0.6 for p in spec.parameters if p.required}
    shared = {k: v for k, v in required.items() if spec.parameter(k).shared}
    per_model = [{k: v for k, v in required.items() if not spec.parameter(k).shared} for _ in range(count)]
    for p in spec.parameters:
        if p.default_value is None:
            continue
        explicit_shared = shared | ({p.name: p.default_value} if p.shared else {})
        explicit_models = [m | ({} if p.shared else {p.name: p.default_value}) for m in per_model]
        assert torch.equal(_merge_with(method, shared, per_model),
                           _merge_with(method, explicit_shared, explicit_models)), p.name


# --- resolution: core.parameters against mergekit and every consumer -------------------------

def _plan_value(plan: StagePlan, target: CurveTarget, rules, layer: int | None, rule: int) -> float | None:
    """Straight from the plan: the value of the first tensor of ``layer`` that ``rule`` wins."""
    for tensor in plan.tensors:
        if tensor.layer != layer:
            continue
        if target.model is None:
            pairs = [(tensor.name, tensor.parameters)]
        else:
            pairs = [(filtered_name(tensor.name, s.tensor), s.parameters) for s in tensor.sources
                     if s.model == target.model]
        for name, params in pairs:
            if next((i for i, r in enumerate(rules) if r.matches(name)), None) == rule:
                return float(params[target.name])
    return None


def _expected(plan: StagePlan, stage: Stage, target: CurveTarget) -> list[tuple[list[float], float | None]]:
    """Per rule: its value at each output layer (nan where it takes no tensor), and at the non-layer tensors."""
    rules = edits.get_rules(stage, target.location, target.name)
    result = []
    for r in range(len(rules)):
        values = [_plan_value(plan, target, rules, layer.index, r) for layer in plan.layers]
        result.append(([math.nan if v is None else v for v in values], _plan_value(plan, target, rules, None, r)))
    return result


@pytest.mark.parametrize("stage", [slices_stage(), models_stage()], ids=["slices", "models"])
def test_curve_series_equal_the_plan(stage):
    plan = plan_stage(stage, DONORS)
    targets = [t for t in curve_targets(stage) if edits.get_rules(stage, t.location, t.name)]
    assert targets
    for target in targets:
        series = stage_curve_series(stage, plan, target)
        for got, (values, non_layer) in zip(series, _expected(plan, stage, target)):
            assert got.layers == [layer.index for layer in plan.layers]
            assert got.values == pytest.approx(values, nan_ok=True)
            assert (got.non_layer.value if got.non_layer else None) == pytest.approx(non_layer)


def test_layers_without_a_plan_are_numbered_as_the_plan_numbers_them():
    stage = slices_stage()  # slice 2's sources are 4 and 3 layers long: the plan takes 3
    plan = plan_stage(stage, DONORS)
    layers, _, planned = curve_layout(stage, None, curve_targets(stage)[0], RULES)
    assert not planned
    assert [(x.index, x.slice_index, x.position, x.slice_length) for x in layers] == \
        [(x.index, x.slice_index, x.position, x.slice_length) for x in plan.layers]


@pytest.mark.parametrize("stage", [slices_stage(), models_stage()], ids=["slices", "models"])
def test_curve_editor_plots_the_plan_values(qtbot, stage):
    pytest.importorskip("pytestqt")
    from merger_gui.qt.curve_editor import TCurveEditor
    from merger_gui.qt.document import RecipeDocument
    from merger_gui.qt.donor_registry import DonorRegistry
    from merger_gui.qt.live_plan import LivePlan

    document = RecipeDocument(Recipe((stage,)))
    registry = DonorRegistry()
    live_plan = LivePlan(document, registry)
    for name, info in DONORS.items():
        registry.set_donor(name, name, info)
    live_plan.refresh_now()
    widget = TCurveEditor(document, live_plan)
    qtbot.addWidget(widget)
    plan = plan_stage(stage, DONORS)
    for target in widget._targets:
        if not edits.get_rules(stage, target.location, target.name):
            continue
        widget.select_target(target.label)
        for r, (values, _) in enumerate(_expected(plan, stage, target)):
            assert widget.curve_values(r) == pytest.approx(values, nan_ok=True), (target.label, r)
    if stage.slices is not None:  # hovering the last layer: slice 2's own mlp rule gives its t
        widget.select_target("t (all slices)")
        assert "mlp: 0.2 from slice 2, rule 1 ('mlp')" in widget.hover_text(plan.layers[-1].index)


def test_cli_plan_groups_values_by_the_rule_that_gave_them():
    stage = slices_stage()
    plan = plan_stage(stage, DONORS)
    view = StageView(stage, plan)
    first, last = plan.layers[0], plan.layers[-1]
    assert list(view.layer_parameters[first.index]["t"]) == ["self_attn", "mlp", "other"]
    assert view.layer_parameters[first.index]["t"]["mlp"] == pytest.approx(0.1)
    assert view.layer_parameters[last.index]["t"]["mlp"] == pytest.approx(0.2)  # slice 2's own rule


def test_resolution_says_where_a_value_comes_from():
    stage = slices_stage()
    found = resolve_parameter("t", "model.layers.1.mlp.up_proj.weight", 0.0, scope_chain(stage, 1))
    assert (found.value, found.scope.kind, found.scope.slice_index, found.rule, found.filter) == \
        (0.2, "slice", 1, 0, "mlp")
    assert found.describe == "slice 2, rule 1 ('mlp')"
    found = resolve_parameter("t", "model.layers.1.self_attn.q_proj.weight", 1.0, scope_chain(stage, 1))
    assert (found.value, found.scope.kind, found.rule) == (0.25, "stage", 0)
    weight = resolve_parameter("weight", "x", 0.0, scope_chain(models_stage(), None, "c"))
    assert (weight.value, weight.scope.kind, weight.scope.source_index, weight.rule) == (0.4, "source", 1, None)
    assert resolve_parameter("lambda", "x", 0.0, scope_chain(models_stage(), None, "c"), 1.0).describe == "default"


# --- the property: core.parameters == mergekit's evaluation -----------------------------------

FILTERS = st.sampled_from([None, "*", "mlp", "self_attn", "layers.1", "proj", "norm", "nothing"])
NUMBERS = st.floats(-2, 2, allow_nan=False, width=32)
VALUES = st.one_of(NUMBERS, st.lists(NUMBERS, min_size=1, max_size=5))
SETTINGS = st.one_of(VALUES, st.lists(st.tuples(VALUES, FILTERS), min_size=0, max_size=4))
TENSORS = st.sampled_from(["model.layers.1.mlp.up_proj.weight", "model.layers.12.self_attn.q_proj.weight",
                           "model.norm.weight", "lm_head.weight", "model.layers.3.input_layernorm.weight"])


def _ours(setting):
    if isinstance(setting, list) and all(isinstance(e, tuple) for e in setting) and setting:
        return tuple(FilterRule(tuple(v) if isinstance(v, list) else v, f) for v, f in setting)
    return tuple(setting) if isinstance(setting, list) else setting


def _theirs(setting, conditional):
    if isinstance(setting, list) and all(isinstance(e, tuple) for e in setting) and setting:
        return [conditional(value=v, filter=f) for v, f in setting]
    return setting


@pytest.mark.mergekit
@settings(max_examples=150, deadline=None)
@given(scopes=st.lists(st.one_of(st.none(), SETTINGS), min_size=3, max_size=3), tensor=TENSORS,
       layers=st.integers(1, 40), data=st.data())
def test_resolution_equals_mergekit(scopes, tensor, layers, data):
    pytest.importorskip("mergekit")
    from mergekit.config import ConditionalParameter
    from mergekit.merge_methods.base import ParameterScope, ParameterSpec
    from mergekit.parameter_resolver import resolve_parameter as mergekit_resolve

    index = data.draw(st.integers(0, layers - 1))
    x = slice_position(index, layers)
    t = index / (layers - 1) if layers > 1 else 1  # mergekit's plan_slice
    assert x == t
    chain = tuple(Scope(kind, Parameters({} if s is None else {"p": _ours(s)}))
                  for kind, s in zip(("source", "slice", "stage"), scopes))
    theirs_settings = [None if s is None else {"p": _theirs(s, ConditionalParameter)} for s in scopes]
    spec = ParameterSpec("p", float, ParameterScope.SHARED, default=0.125)
    expected = mergekit_resolve(spec, theirs_settings, tensor_name=tensor, t=t)
    assert resolve_parameter("p", tensor, x, chain, 0.125).value == expected
