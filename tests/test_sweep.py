"""Sweeps: variants are the recipe edited and merged one by one; cancel, resume, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from merger_gui.cli import main  # noqa: E402
from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.core.inspect import inspect_folder  # noqa: E402
from merger_gui.core.recipe import FilterRule  # noqa: E402
from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.core.synthetic import DonorShape  # noqa: E402
import merger_gui.engine.sweep as engine_sweep  # noqa: E402
from merger_gui.engine.evaluate import EvaluationOptions, EvaluationProgress, score_folder  # noqa: E402
from merger_gui.engine.run import TensorProgress, run_merge  # noqa: E402
from merger_gui.engine.sweep import (  # noqa: E402
    STATE_FILE, SweepCancelled, SweepDone, SweepOptions, VariantDone, VariantStarted, parse_param_path, parse_values,
    run_sweep, stepped_values, sweep_paths, variant_recipe,
)

SHAPE = DonorShape(num_layers=2, hidden_size=32, intermediate_size=64, vocab_size=64)
TEXT = " ".join(f"tok{3 + (i * 7) % 60}" for i in range(40))
RECIPE = """
slices:
  - sources:
      - {{model: "{a}", layer_range: [0, 2]}}
      - {{model: "{b}", layer_range: [0, 2]}}
merge_method: slerp
base_model: "{a}"
parameters:
  t:
    - {{filter: self_attn, value: [0.2, 0.8]}}
    - {{value: 0.5}}
"""


@pytest.fixture
def setup(make_donor, tmp_path):
    a, b = make_donor("a", SHAPE, seed=1), make_donor("b", SHAPE, seed=2)
    recipe = load_recipe_text(RECIPE.format(a=a, b=b))
    return recipe, {str(a): inspect_folder(a), str(b): inspect_folder(b)}, tmp_path


def sweep(recipe, donors, out, param, values, keep=False, cancel=None):
    options = SweepOptions(keep=keep, evaluation=EvaluationOptions(text=TEXT))
    return run_sweep(recipe, donors, out, param, values, options, cancel)


def final(events):
    events = list(events)
    assert isinstance(events[-1], SweepDone)
    return events, events[-1].result


def test_paths_name_a_parameter_or_its_filtered_rule(setup):
    recipe = setup[0]
    stage = recipe.stages[0]
    assert sweep_paths(stage) == ["t", "t.self_attn"]
    assert parse_param_path("t.model.norm").filter == "model.norm"
    assert variant_recipe(recipe, parse_param_path("t"), 0.3).stages[0].parameters["t"] == 0.3
    rules = variant_recipe(recipe, parse_param_path("t.self_attn"), 0.3).stages[0].parameters["t"]
    assert rules == (FilterRule(0.3, "self_attn"), FilterRule(0.5))
    with pytest.raises(UserError, match="no rule with filter 'mlp'"):
        variant_recipe(recipe, parse_param_path("t.mlp"), 0.3)
    with pytest.raises(UserError, match="no parameter 'weight'"):
        variant_recipe(recipe, parse_param_path("weight"), 0.3)


def test_values_parse_and_step():
    assert parse_values("0.3, 0.5,0.7") == (0.3, 0.5, 0.7)
    assert stepped_values(0.3, 0.7, 5) == (0.3, 0.4, 0.5, 0.6, 0.7)
    for bad in ("0.3,x", "0.3,0.3", "nan"):
        with pytest.raises(UserError):
            parse_values(bad)


def test_variants_equal_the_recipes_merged_one_by_one(setup):
    recipe, donors, tmp_path = setup
    events, result = final(sweep(recipe, donors, tmp_path / "sweep", "t.self_attn", [0.0, 0.9], keep=True))

    assert [v.value for v in result.variants] == [0.0, 0.9]
    assert set(result.donors) == set(donors)
    options = EvaluationOptions(text=TEXT)
    for variant in result.variants:
        alone = tmp_path / f"alone-{variant.value}"
        list(run_merge(variant_recipe(recipe, parse_param_path("t.self_attn"), variant.value), donors, alone))
        swept, merged = load_file(f"{variant.folder}/model.safetensors"), load_file(alone / "model.safetensors")
        assert swept.keys() == merged.keys()
        assert all(torch.equal(swept[name], merged[name]) for name in merged)
        score = _result(score_folder(alone, TEXT, options))
        assert variant.perplexity == score.perplexity
        assert set(variant.agreement) == set(donors)
    assert result.variants[0].perplexity != result.variants[1].perplexity


def _result(generator):
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


def test_variants_are_deleted_unless_kept(setup):
    recipe, donors, tmp_path = setup
    out = tmp_path / "sweep"
    _, result = final(sweep(recipe, donors, out, "t", [0.2, 0.6]))
    assert sorted(p.name for p in out.iterdir()) == [STATE_FILE]
    assert all(v.folder is None for v in result.variants)
    state = json.loads((out / STATE_FILE).read_text())
    assert [v["value"] for v in state["variants"]] == [0.2, 0.6]


@pytest.mark.parametrize("when", ["merging", "evaluating"])
def test_cancel_leaves_no_variant_folder_and_the_next_run_resumes(setup, when):
    recipe, donors, tmp_path = setup
    out, cancel = tmp_path / "sweep", threading.Event()
    events = sweep(recipe, donors, out, "t", [0.2, 0.6], keep=True, cancel=cancel)
    started = 0
    with pytest.raises(SweepCancelled, match="resume"):
        for event in events:
            started += isinstance(event, VariantStarted)
            trigger = TensorProgress if when == "merging" else EvaluationProgress
            if started == 2 and isinstance(event, trigger):
                cancel.set()
    assert sorted(p.name for p in out.iterdir() if p.name != "stages") == [STATE_FILE, "t-0.2"]

    events, result = final(sweep(recipe, donors, out, "t", [0.2, 0.6], keep=True))
    assert [e.resumed for e in events if isinstance(e, VariantDone)] == [True, False]
    assert [e.value for e in events if isinstance(e, VariantStarted)] == [0.6]
    assert [v.value for v in result.variants] == [0.2, 0.6]


def test_another_sweep_or_a_foreign_folder_is_refused(setup):
    recipe, donors, tmp_path = setup
    out = tmp_path / "sweep"
    final(sweep(recipe, donors, out, "t", [0.2]))
    with pytest.raises(UserError, match="another recipe, parameter"):
        list(sweep(recipe, donors, out, "t.self_attn", [0.2]))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a sweep folder"):
        list(sweep(recipe, donors, tmp_path / "notes", "t", [0.2]))


def test_a_sweep_that_changes_no_tensor_is_refused(setup):
    recipe, donors, tmp_path = setup
    stage = recipe.stages[0]
    slice_ = stage.slices[0]
    overridden = recipe.replace_stage(0, type(stage)(**{**stage.__dict__, "slices": (
        type(slice_)(slice_.sources, slice_.parameters.with_value("t", 0.5)),)}))
    with pytest.raises(UserError, match="changes no tensor"):
        list(sweep(overridden, donors, tmp_path / "sweep", "t", [0.2, 0.6]))


def test_cli_sweep_json(setup, capsys):
    recipe, donors, tmp_path = setup
    a, b = list(donors)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(a=a, b=b))
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), str(out), "--param", "t", "--values", "0.25,0.75", "--text", str(text),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"param", "donors", "variants"}
    assert [v["value"] for v in data["variants"]] == [0.25, 0.75]
    assert set(data["variants"][0]) == {"value", "perplexity", "agreement", "folder"}
    with pytest.raises(SystemExit) as usage:
        main(["sweep", str(path), str(out), "--param", "t", "--values", "0.25,x"])
    assert usage.value.code == 2


def test_cli_sweep_sigterm_cancels_like_ctrl_c(setup, capsys, monkeypatch):
    recipe, donors, tmp_path = setup
    a, b = list(donors)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(a=a, b=b))
    out = tmp_path / "sweep"
    real = engine_sweep.run_sweep

    def terminated_mid_merge(*args, **kwargs):
        for event in real(*args, **kwargs):
            if isinstance(event, TensorProgress):
                os.kill(os.getpid(), signal.SIGTERM)
            yield event

    monkeypatch.setattr(engine_sweep, "run_sweep", terminated_mid_merge)
    held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = main(["sweep", str(path), str(out), "--param", "t", "--values", "0.25,0.75"])
    finally:
        for signum, handler in held.items():  # a cancel ignores them until the process ends
            signal.signal(signum, handler)
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("cancelled by SIGTERM: the finished variants")
    assert not [p for p in out.iterdir() if p.is_dir()]  # the unfinished variant is removed


@pytest.mark.parametrize("argv, message", [
    (["--param", "t", "--values", "0.25,x"], None),  # a usage error
    (["--param", "t", "--values", "0.25,0.25"], None),
    (["--param", "t", "--values", "1e400"], None),
    (["--param", "weight", "--values", "0.25,0.75"], "slerp has no parameter 'weight'; sweepable: t, t.self_attn"),
    (["--param", "t.mlp", "--values", "0.25"], "no rule with filter 'mlp'"),
    (["--param", "t.", "--values", "0.25"], "invalid parameter 't.'"),
    (["--param", "t", "--values", "0.5,1.5"], "t = 1.5 cannot be merged: .*t = 1.5 at parameters.t is outside"),
    (["--param", "t.self_attn", "--values=-0.5,0.5"], "t.self_attn = -0.5 cannot be merged: .*outside"),
])
def test_cli_sweep_checks_every_argument_before_loading_a_model(setup, capsys, monkeypatch, argv, message):
    recipe, donors, tmp_path = setup
    a, b = list(donors)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(a=a, b=b))
    out = tmp_path / "sweep"

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded or merged before the arguments were checked")

    monkeypatch.setattr(engine_sweep, "score_folder", no_loading)
    monkeypatch.setattr(engine_sweep, "run_merge", no_loading)
    if message is None:
        with pytest.raises(SystemExit) as usage:
            main(["sweep", str(path), str(out), *argv])
        assert usage.value.code == 2
    else:
        assert main(["sweep", str(path), str(out), *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert re.search(message, err), err
    assert not out.exists()


def test_sweep_of_an_invalid_recipe_or_into_a_donor_fails_before_loading(setup, monkeypatch):
    recipe, donors, tmp_path = setup
    a, b = list(donors)
    monkeypatch.setattr(engine_sweep, "score_folder", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    broken = load_recipe_text(RECIPE.format(a=a, b=b).replace("[0, 2]", "[0, 9]"))
    with pytest.raises(UserError, match=r"^the recipe is not valid: .*layer"):
        list(sweep(broken, donors, tmp_path / "sweep", "t", [0.2, 0.6]))
    with pytest.raises(UserError, match="the sweep folder .* overlaps the folder of donor"):
        list(sweep(recipe, donors, Path(a) / "sweep", "t", [0.2, 0.6]))
    assert not (Path(a) / "sweep").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("blocker", ["file", "dead link"])
def test_a_sweep_folder_through_a_file_or_a_dead_link_is_one_line(setup, monkeypatch, blocker):
    recipe, donors, tmp_path = setup
    monkeypatch.setattr(engine_sweep, "score_folder", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    way = tmp_path / "blocker"
    way.symlink_to(tmp_path / "nowhere") if blocker == "dead link" else way.write_text("mine")
    why = "a link to nothing" if blocker == "dead link" else "not a folder"
    with pytest.raises(UserError, match=f"cannot create {way / 'sweep'}: {way} is {why}"):
        list(sweep(recipe, donors, way / "sweep", "t", [0.2, 0.6]))
    assert way.is_symlink() or way.read_text() == "mine"
