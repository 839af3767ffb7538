"""Layer analysis on donors with planted structure: weight similarity, layer distances, seams, the CLI's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from merger_gui.cli import main
from merger_gui.core.plan import LayerSource
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.synthetic import DonorShape, random_tensors
from merger_gui.engine.activation_analysis import (
    ActivationOptions, ActivationsDone, Seam, SeamsDone, analyze_activations, analyze_seams,
)
from merger_gui.engine.layer_similarity import AnalysisCancelled, SimilarityDone, compare_layers

SHAPE = DonorShape(num_layers=6)
TEXT = " ".join(f"tok{3 + (7 * i) % 90}" for i in range(40))


def layer_vector(tensors: dict[str, np.ndarray], layer: int) -> np.ndarray:
    prefix = f"model.layers.{layer}."
    return np.concatenate([a.reshape(-1) for n, a in tensors.items() if n.startswith(prefix)]).astype(np.float64)


def with_layers(tensors: dict[str, np.ndarray], source_of: list[int], noise: float, seed: int) -> dict[str, np.ndarray]:
    """Layer k of the result is layer ``source_of[k]`` of ``tensors``, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    out = dict(tensors)
    for k, j in enumerate(source_of):
        for name, array in tensors.items():
            if name.startswith(f"model.layers.{j}."):
                moved = name.replace(f"model.layers.{j}.", f"model.layers.{k}.")
                out[moved] = (array + noise * rng.standard_normal(array.shape)).astype(np.float32)
    return out


def similarity_result(donors, base=None, **kwargs):
    events = list(compare_layers(donors, base, **kwargs))
    assert isinstance(events[-1], SimilarityDone)
    return events[-1].result


def test_permuted_layers_are_recovered_and_match_numpy(make_donor):
    first = random_tensors(SHAPE, seed=1)
    permutation = [3, 0, 5, 1, 4, 2]
    second = with_layers(first, permutation, noise=0.02, seed=9)
    a = make_donor("a", SHAPE, seed=1, dtype="float32")
    b = make_donor("b", SHAPE, seed=2, dtype="float32", extra_tensors=second)
    # A small block size: many row blocks per tensor kind, summed.
    result = similarity_result([("a", resolve_donor(str(a))), ("b", resolve_donor(str(b)))], chunk_bytes=8192)
    matrix = np.array(result.similarity)
    assert matrix.shape == (6, 6)
    assert [int(j) for j in matrix.argmax(axis=1)] == [permutation.index(i) for i in range(6)]
    direct = np.array([[np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)
                        for y in (layer_vector(second, j) for j in range(6))]
                       for x in (layer_vector(first, i) for i in range(6))])
    np.testing.assert_allclose(matrix, direct, atol=1e-5)


def test_relative_change_is_zero_for_an_untouched_layer(make_donor):
    base_tensors = random_tensors(SHAPE, seed=1)
    tuned = with_layers(base_tensors, list(range(6)), noise=0.01, seed=5)
    tuned.update({n: a for n, a in base_tensors.items() if n.startswith("model.layers.2.")})  # delta-free
    base = make_donor("base", SHAPE, seed=1, dtype="float32")
    donor = make_donor("tuned", SHAPE, seed=3, dtype="float32", extra_tensors=tuned)
    result = similarity_result([("tuned", resolve_donor(str(donor)))], ("base", resolve_donor(str(base))))
    change = result.relative_change[0]
    assert change[2] == 0.0
    expected = [np.linalg.norm(layer_vector(tuned, k) - layer_vector(base_tensors, k))
                / np.linalg.norm(layer_vector(base_tensors, k)) for k in range(6)]
    np.testing.assert_allclose(change, expected, rtol=1e-5)
    assert result.similarity is None


def test_cancel_stops_the_weight_comparison(make_donor):
    import threading

    a, b = make_donor("a", seed=1), make_donor("b", seed=2)
    cancel = threading.Event()
    events = compare_layers([("a", resolve_donor(str(a))), ("b", resolve_donor(str(b)))], cancel=cancel)
    next(events)
    cancel.set()
    with pytest.raises(AnalysisCancelled):
        list(events)


def test_identity_layer_has_the_smallest_distance_and_matches_transformers(make_donor):
    import torch
    import transformers

    tensors = random_tensors(SHAPE, seed=4)
    for kind in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        tensors[f"model.layers.3.{kind}"] = np.zeros_like(tensors[f"model.layers.3.{kind}"])
    folder = make_donor("d", SHAPE, seed=4, dtype="float32", extra_tensors=tensors)
    events = list(analyze_activations([("d", folder)], ActivationOptions(text=TEXT, blocks=(2,))))
    distances = events[-1].distances[0]
    assert isinstance(events[-1], ActivationsDone)
    assert distances.layer_distance[3] < 1e-6
    assert min(range(6), key=distances.layer_distance.__getitem__) == 3
    assert len(distances.block_distance[2]) == 5
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = transformers.AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]
    with torch.inference_mode():
        hidden = [h[0].double() for h in model(torch.tensor([ids]), output_hidden_states=True).hidden_states]

    def angle(x, y):
        return float((torch.arccos(torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1)) / torch.pi)
                     .mean())

    # hidden_states[6] has the final norm applied; layers 0-4 are compared directly.
    np.testing.assert_allclose(distances.layer_distance[:5], [angle(hidden[k], hidden[k + 1]) for k in range(5)],
                               atol=1e-6)
    np.testing.assert_allclose(distances.block_distance[2][:4], [angle(hidden[k], hidden[k + 2]) for k in range(4)],
                               atol=1e-6)


def test_a_seam_in_natural_order_is_no_jump_and_its_best_partner_is_the_next_layer(make_donor):
    a, b = make_donor("a", seed=1), make_donor("b", seed=2)
    seams = [Seam("s", 2, LayerSource("a", 1), LayerSource("a", 2)),
             Seam("s", 3, LayerSource("a", 1), LayerSource("b", 3))]
    done = list(analyze_seams(seams, {"a": a, "b": b}, ActivationOptions(text=TEXT)))[-1]
    assert isinstance(done, SeamsDone)
    natural, jump = done.seams
    assert natural.distance < 1e-6 and natural.best_to_layer == 2
    assert jump.distance > 0.05 and 0 <= jump.best_to_layer < 4


def test_analyze_json_keys(make_donor, tmp_path, capsys):
    a, b, base = make_donor("a", seed=1), make_donor("b", seed=2), make_donor("base", seed=3)
    assert main(["analyze", str(a), str(b), "--base", str(base), "--text", str(write(tmp_path, TEXT)),
                 "--block", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["donors", "weights", "activations", "seams"]
    assert report["donors"] == [{"name": str(a), "num_layers": 4}, {"name": str(b), "num_layers": 4}]
    assert list(report["weights"]) == ["similarity", "base_delta"]
    assert np.array(report["weights"]["similarity"]).shape == (4, 4)
    assert np.array(report["weights"]["base_delta"]).shape == (2, 4)
    assert [list(x) for x in report["activations"]] == [["donor", "layer_distance", "block_distance"]] * 2
    assert list(report["activations"][0]["block_distance"]) == ["2"]
    recipe = write(tmp_path, f"slices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
                             f"  - sources: [{{model: {b}, layer_range: [1, 4]}}]\nmerge_method: passthrough\n",
                   "r.yaml")
    assert main(["analyze", str(recipe), "--json"]) == 0
    seams = json.loads(capsys.readouterr().out)["seams"]
    assert seams == [{"stage": "1", "index": 2, "from": {"model": str(a), "layer": 1},
                      "to": {"model": str(b), "layer": 1}, "distance": seams[0]["distance"],
                      "best_to_layer": seams[0]["best_to_layer"]}]


def test_a_profile_donor_is_refused_in_one_line(capsys):
    assert main(["analyze", "profile:llama-2-13b", "profile:llama-2-13b", "--no-activations"]) == 1
    assert "has no local weights" in capsys.readouterr().err


def write(folder, text: str, name: str = "text.txt"):
    path = folder / name
    path.write_text(text)
    return path
