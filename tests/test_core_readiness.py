"""Pure core rules shared by the window, the CLI and the engine: partial planning, merge
readiness, durations and counts, and the edits that slice drags make."""

from __future__ import annotations

from dataclasses import replace

import pytest

from merger_gui.core import slice_edits
from merger_gui.core.errors import UserError
from merger_gui.core.partial_plan import NO_MODELS, plan_partially
from merger_gui.core.plan import plan_recipe
from merger_gui.core.profiles import load_profile
from merger_gui.core.readiness import merge_readiness
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.units import format_count, format_duration

PROFILE = load_profile("llama-2-7b")  # 32 layers, no weights
LOCAL = replace(PROFILE, kind="folder", path="/models/llama")  # as if inspected from a folder


def passthrough(*ranges: tuple[str, int, int], name: str | None = None) -> Stage:
    return Stage("passthrough", slices=tuple(Slice((SliceSource(m, (a, b)),)) for m, a, b in ranges), name=name)


def slerp(*sources: tuple[str, int, int]) -> Stage:
    return Stage("slerp", slices=(Slice(tuple(SliceSource(m, (a, b)) for m, a, b in sources)),),
                 base_model=sources[0][0])


# --- partial planning ------------------------------------------------------------------------


def test_every_stage_that_can_be_planned_is_planned_in_dependency_order():
    recipe = Recipe((passthrough(("first", 0, 8)), passthrough(("a", 0, 4), ("a", 2, 6), name="first"),
                     passthrough(("ghost", 0, 4), name="broken")))
    partial = plan_partially(recipe, {"a": LOCAL})
    assert partial.order == (1, 0, 2)  # the stage named 'first' runs before the one that reads it
    assert partial.stage_plans[1].num_layers == 8
    assert partial.stage_plans[0].num_layers == 8  # planned on the earlier stage's output
    assert partial.known_donors["first"].num_layers == 8
    assert 2 not in partial.stage_plans and "ghost" in partial.stage_errors[2]
    assert partial.errors == (f"stage 'broken': {partial.stage_errors[2]}",)
    assert partial.error == partial.errors[0] and partial.plan is None


def test_a_whole_plan_when_every_stage_plans_and_equal_to_plan_recipe():
    recipe = Recipe((passthrough(("a", 0, 8), ("a", 4, 12)),))
    partial = plan_partially(recipe, {"a": LOCAL})
    assert partial.errors == () and partial.error is None
    assert partial.plan == plan_recipe(recipe, {"a": LOCAL})


def test_a_cycle_is_reported_and_the_stages_still_tried_in_file_order():
    recipe = Recipe((passthrough(("y", 0, 4), name="x"), passthrough(("x", 0, 4), name="y")))
    partial = plan_partially(recipe, {})
    assert partial.order == (0, 1)
    assert "cycle" in partial.errors[0] and partial.plan is None


def test_nothing_to_plan_says_the_recipe_has_no_models():
    partial = plan_partially(Recipe(()), {})
    assert partial.errors == () and partial.error == NO_MODELS and partial.plan is None
    assert plan_partially(Recipe((Stage("passthrough", slices=()),)), {}).error == NO_MODELS


# --- merge readiness -------------------------------------------------------------------------


def test_a_recipe_with_local_donors_can_be_merged():
    assert merge_readiness(Recipe((passthrough(("a", 0, 8)),)), {"a": LOCAL}) == []


def test_profiles_missing_donors_and_donors_without_weights_block():
    recipe = Recipe((slerp(("a", 0, 8), ("b", 0, 8)), passthrough(("c", 0, 4), ("d", 0, 4), name="s")))
    blockers = merge_readiness(recipe, {"a": PROFILE, "b": replace(PROFILE, kind="folder", path=None)},
                               {"d": "d: no such folder"})
    assert blockers[0].startswith("a is a shape profile (profile:llama-2-7b)")
    assert blockers[1] == "b (profile:llama-2-7b) has no local weights"
    assert blockers[2:4] == ["c: no donor chosen yet", "d: d: no such folder"]
    assert not any(b.endswith(": d: no such folder") and not b.startswith("d:") for b in blockers)  # once only


def test_validation_errors_block_with_their_location():
    recipe = Recipe((passthrough(("a", 30, 40)),))  # past the donor's 32 layers
    blockers = merge_readiness(recipe, {"a": LOCAL})
    assert blockers and blockers[0].startswith("stage 1 › slice 1")


def test_stage_outputs_are_not_donors_and_hub_donors_need_no_folder():
    hub = replace(PROFILE, kind="hub", path=None)
    recipe = Recipe((passthrough(("a", 0, 8), name="s"), passthrough(("s", 0, 8))))
    assert merge_readiness(recipe, {"a": hub}) == []


def test_the_engine_refuses_what_readiness_blocks(tmp_path):
    from merger_gui.engine.run import run_merge

    recipe = Recipe((passthrough(("a", 0, 8)),))
    with pytest.raises(UserError, match="not valid: a is a shape profile") as caught:
        list(run_merge(recipe, {"a": PROFILE}, tmp_path / "out"))
    assert merge_readiness(recipe, {"a": PROFILE})[0] in str(caught.value)
    assert not (tmp_path / "out").exists()


# --- durations and counts --------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0.42, "0.4 s"), (9.94, "9.9 s"), (9.96, "10 s"), (42.4, "42 s"), (125, "2 min 05 s"),
    (3599.6, "1 h 00 min"), (3720, "1 h 02 min"), (-1, "0.0 s"),
])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("count", "text"), [
    (19_994_362_880, "19.99 B"), (1_250_000, "1.25 M"), (999_999, "1.00 M"), (12_500, "12.50 K"), (999, "999"),
])
def test_counts(count, text):
    assert format_count(count) == text


# --- the edits slice drags make ----------------------------------------------------------------


def ranges(stage: Stage) -> list[list[tuple[int, int]]]:
    return [[s.layer_range for s in slice_.sources] for slice_ in stage.slices]


def test_a_drag_of_the_same_length_moves_one_source_only():
    stage = slerp(("a", 0, 8), ("b", 4, 12))
    assert ranges(slice_edits.set_source_range(stage, 0, (2, 10), num_layers=32)) == [[(2, 10), (4, 12)]]
    assert slice_edits.set_source_range(stage, 0, (0, 8)) is stage


def test_a_drag_of_one_end_resizes_every_source_alike():
    stage = slerp(("a", 0, 8), ("b", 4, 12))
    assert ranges(slice_edits.set_source_range(stage, 0, (0, 11), num_layers=32)) == [[(0, 11), (4, 15)]]
    assert ranges(slice_edits.set_source_range(stage, 0, (3, 8), num_layers=32)) == [[(3, 8), (7, 12)]]
    assert ranges(slice_edits.set_source_range(stage, 0, (1, 12), source=1)) == [[(0, 8), (1, 12)]]


def test_a_linked_source_keeps_at_least_one_layer():
    stage = slerp(("a", 4, 8), ("b", 0, 2))
    assert ranges(slice_edits.resize_slice(stage, 0, start=7, num_layers=32)) == [[(7, 8), (3, 4)]]
    stage = slerp(("a", 4, 8), ("b", 0, 1))
    assert ranges(slice_edits.resize_slice(stage, 0, end=5, num_layers=32)) == [[(4, 5), (0, 1)]]


def test_linked_models_follow_the_method():
    shown = ("a", "b", "c")
    assert slice_edits.linked_models(passthrough(("a", 0, 4)), "a", shown) == ()
    assert slice_edits.linked_models(slerp(("a", 0, 4), ("c", 0, 4)), "a", shown) == ("c",)
    assert slice_edits.linked_models(Stage("slerp", slices=()), "b", shown) == ("a",)
    assert slice_edits.linked_models(Stage("ties", slices=()), "b", shown) == ("a", "c")
