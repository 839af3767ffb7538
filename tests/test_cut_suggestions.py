"""Cut suggestions and their pure edits: a block dropped from the slices, a seam's slice started elsewhere."""

from merger_gui.core.cut_suggestions import drop_block_suggestion, join_suggestion, used_layers
from merger_gui.core.recipe import Slice, SliceSource, Stage
from merger_gui.core.slice_edits import drop_layers, set_slice_start


def ranges(stage: Stage) -> list[list[tuple[str, tuple[int, int]]]]:
    return [[(s.model, s.layer_range) for s in slice_.sources] for slice_ in stage.slices]


def stage(*parts: tuple[str, tuple[int, int]]) -> Stage:
    return Stage("passthrough", slices=tuple(Slice((SliceSource(m, r),)) for m, r in parts))


def test_drop_layers_trims_splits_and_deletes_slices_of_that_model_only():
    before = stage(("a", (0, 8)), ("b", (4, 12)), ("a", (6, 10)))
    assert ranges(drop_layers(before, "a", 2, 4)) == [[("a", (0, 2))], [("a", (4, 8))], [("b", (4, 12))],
                                                      [("a", (6, 10))]]
    assert ranges(drop_layers(before, "a", 6, 12)) == [[("a", (0, 6))], [("b", (4, 12))]]
    assert drop_layers(before, "c", 0, 4) == before


def test_drop_layers_keeps_paired_sources_paired():
    paired = Stage("slerp", slices=(Slice((SliceSource("a", (0, 6)), SliceSource("b", (2, 8)))),))
    assert ranges(drop_layers(paired, "a", 2, 4)) == [[("a", (0, 2)), ("b", (2, 4))],
                                                      [("a", (4, 6)), ("b", (6, 8))]]


def test_set_slice_start_keeps_the_end_or_moves_past_it():
    before = stage(("a", (0, 8)), ("b", (8, 12)))
    assert ranges(set_slice_start(before, 1, 5))[1] == [("b", (5, 12))]
    assert ranges(set_slice_start(before, 1, 14, num_layers=20))[1] == [("b", (14, 18))]
    assert ranges(set_slice_start(before, 1, 14, num_layers=16))[1] == [("b", (12, 16))]  # inside the donor
    assert set_slice_start(before, 1, 8) == before


def test_drop_suggestion_picks_the_smallest_block_the_stage_uses_whole():
    before = stage(("a", (0, 6)), ("b", (0, 4)))
    assert used_layers(before, "a") == set(range(6))
    distances = [0.5, 0.4, 0.3, 0.2, 0.25, 0.01, 0.0]  # blocks of 2 from 0..6 (a has 8 layers)
    suggestion = drop_block_suggestion(before, "a", distances, 2)
    assert suggestion is not None and "2-layer block 3–4" in suggestion.text
    assert ranges(suggestion.edit(before)) == [[("a", (0, 3))], [("a", (5, 6))], [("b", (0, 4))]]
    assert drop_block_suggestion(stage(("a", (0, 2))), "a", distances, 2) is None  # nothing would be left


def test_join_suggestion_starts_the_next_slice_at_the_closest_input():
    before = stage(("a", (0, 6)), ("b", (6, 12)))
    suggestion = join_suggestion(before, 1, ("a", 5), ("b", 6), 3, num_layers=12)
    assert suggestion is not None and suggestion.text == "Join a 5 to b 3–11: the closest inputs"
    assert ranges(suggestion.edit(before))[1] == [("b", (3, 12))]
    assert join_suggestion(before, 1, ("a", 5), ("b", 6), 6) is None
