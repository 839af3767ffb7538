"""Pure slice edits: ranges stay valid, lengths are kept, nothing else changes."""

from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.slice_edits import (
    add_slice, clamp_range, delete_slice, duplicate_slice, layer_range_label, move_slice, nudge_slice,
    nudge_slice_end, rename_model, reorder_slice, resize_slice, set_slice_model,
)


def ranges(stage: Stage) -> list[tuple[str, tuple[int, int]]]:
    return [(s.sources[0].model, s.sources[0].layer_range) for s in stage.slices]


def rose() -> Stage:
    return Stage("passthrough", slices=tuple(
        Slice((SliceSource(m, r),)) for m, r in
        (("a", (0, 16)), ("b", (8, 24)), ("a", (17, 32)), ("b", (25, 40)))))


def test_labels_use_inclusive_layer_numbers():
    assert layer_range_label(0, 16) == "layers 0–15"
    assert layer_range_label(4, 5) == "layer 4"


def test_clamp_orders_bounds_and_keeps_one_layer():
    assert clamp_range(10, 4) == (4, 10)
    assert clamp_range(-3, 50, 40) == (0, 40)
    assert clamp_range(45, 50, 40) == (39, 40)
    assert clamp_range(5, 5) == (5, 6)


def test_add_slice_appends_or_inserts_clamped():
    stage = add_slice(Stage("passthrough", slices=None), "a", 9, 4, num_layers=8)
    assert ranges(stage) == [("a", (4, 8))]
    stage = add_slice(stage, "b", 0, 2, index=0)
    assert ranges(stage) == [("b", (0, 2)), ("a", (4, 8))]


def test_move_keeps_length_inside_the_donor():
    assert ranges(move_slice(rose(), 1, 30, num_layers=40))[1] == ("b", (24, 40))
    assert ranges(move_slice(rose(), 1, -5, num_layers=40))[1] == ("b", (0, 16))
    assert ranges(move_slice(rose(), 0, 3))[0] == ("a", (3, 19))


def test_resize_each_edge_and_never_empties():
    assert ranges(resize_slice(rose(), 0, end=19, num_layers=40))[0] == ("a", (0, 19))
    assert ranges(resize_slice(rose(), 0, start=4))[0] == ("a", (4, 16))
    assert ranges(resize_slice(rose(), 0, start=30))[0] == ("a", (15, 16))
    assert ranges(resize_slice(rose(), 3, end=99, num_layers=40))[3] == ("b", (25, 40))
    assert ranges(resize_slice(rose(), 3, end=2))[3] == ("b", (25, 26))


def test_resize_moves_paired_sources_alike():
    stage = Stage("slerp", slices=(Slice((SliceSource("a", (0, 8)), SliceSource("b", (4, 12)))),))
    sources = resize_slice(stage, 0, end=10, source=0).slices[0].sources
    assert [s.layer_range for s in sources] == [(0, 10), (4, 14)]


def test_reorder_duplicate_delete():
    assert [r for _, r in ranges(reorder_slice(rose(), 3, 0))] == [(25, 40), (0, 16), (8, 24), (17, 32)]
    assert [r for _, r in ranges(reorder_slice(rose(), 0, 99))][-1] == (0, 16)
    dup = duplicate_slice(rose(), 1)
    assert len(dup.slices) == 5 and dup.slices[1] == dup.slices[2]
    assert ranges(delete_slice(rose(), 0))[0] == ("b", (8, 24))


def test_set_model_and_rename():
    assert ranges(set_slice_model(rose(), 3, "c", num_layers=32))[3] == ("c", (25, 32))
    recipe = Recipe((rose(), Stage("slerp", base_model="a", slices=(Slice((SliceSource("a", (0, 4)),)),))))
    renamed = rename_model(recipe, "a", "z")
    assert "a" not in renamed.stages[0].referenced_models + renamed.stages[1].referenced_models
    assert renamed.stages[1].base_model == "z"


def test_nudges_move_a_slice_or_one_end_inside_its_donors():
    stage = Stage("slerp", slices=(Slice((SliceSource("a", (4, 8)), SliceSource("b", (0, 4)))),))
    layers = {"a": 10, "b": 40}
    assert nudge_slice(stage, 0, -1) == stage  # b cannot go below layer 0: the pair stays paired
    moved = nudge_slice(stage, 0, 5, num_layers=layers).slices[0].sources
    assert [s.layer_range for s in moved] == [(6, 10), (2, 6)]  # cut short at a's last layer
    ended = nudge_slice_end(stage, 0, "end", 1, num_layers=layers).slices[0].sources
    assert [s.layer_range for s in ended] == [(4, 9), (0, 5)]
    assert ranges(nudge_slice_end(rose(), 0, "start", 20))[0] == ("a", (15, 16))  # never empty
