"""``merger-gui validate`` and ``merger-gui plan``: output, JSON, exit codes, one-line user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from merger_gui.cli import main
from merger_gui.cli.plan_command import format_ranges

ROSE_DONORS = ["--donor", "Thorns-13B=profile:llama-2-13b", "--donor", "Noromaid-13B=profile:llama-2-13b"]
NYXENE_DONORS = [
    arg for model in ("fblgit/una-cybertron-7b-v2", "chargoddard/loyal-piano-m7-cdpo",
                      "berkeley-nest/Starling-LM-7B-alpha", "openaccess-ai-collective/DPOpenHermes-7B")
    for arg in ("--donor", f"{model}=profile:mistral-7b")
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_rose_json_reports_62_layers_and_exact_params(capsys, seed_recipe_path):
    code, out, _ = run_cli(capsys, "plan", seed_recipe_path("rose-20b.yaml"), *ROSE_DONORS, "--json")
    assert code == 0
    (stage,) = json.loads(out)["stages"]
    assert stage["num_layers"] == 62 and stage["params"] == 19_994_362_880
    assert stage["merge_method"] == "passthrough"
    assert [s["layer"] for s in stage["seams"]] == [16, 32, 47]
    assert stage["layers"][16]["sources"] == [{"model": "Noromaid-13B", "layer": 8}]
    usage = {u["model"]: u for u in stage["donor_usage"]}
    assert usage["Thorns-13B"]["skipped"] == [16, 32, 33, 34, 35, 36, 37, 38, 39]
    assert usage["Noromaid-13B"]["skipped"] == [0, 1, 2, 3, 4, 5, 6, 7, 24]
    assert usage["Thorns-13B"]["repeated"] == []


def test_plan_rose_text(capsys, seed_recipe_path):
    code, out, _ = run_cli(capsys, "plan", seed_recipe_path("rose-20b.yaml"), *ROSE_DONORS)
    assert code == 0
    assert "62 layers, 19,994,362,880 parameters" in out
    assert "16–31  Noromaid-13B 8–23" in out
    assert "Thorns-13B (40 layers): used once 0–15, 17–31; repeated none; skipped 16, 32–39" in out
    assert "16 (Thorns-13B 15 → Noromaid-13B 8)" in out


def test_plan_without_donors_names_the_missing_donor_and_the_fix(capsys, seed_recipe_path):
    code, out, err = run_cli(capsys, "plan", seed_recipe_path("rose-20b.yaml"))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: donor 'Thorns-13B' not found (not a folder, not an org/name Hub repo id) "
                          "(and 1 more: Noromaid-13B); map it with --donor Thorns-13B=profile:llama-2-13b or a "
                          "folder/repo id (profiles: llama-2-7b, llama-2-13b, ")


def test_validate_hints_a_profile_per_missing_donor(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("merge_method: passthrough\nslices:\n  - sources:\n    - {model: Starling-LM-7B, "
                      "layer_range: [0, 4]}\n  - sources:\n    - {model: mystery, layer_range: [0, 4]}\n")
    code, out, _ = run_cli(capsys, "validate", recipe)
    assert code == 1
    assert "--donor Starling-LM-7B=profile:mistral-7b or a folder/repo id" in out
    assert "--donor mystery=profile:NAME or a folder/repo id" in out


def test_validate_nyxene_reports_the_filter_and_the_misnamed_stage(capsys, seed_recipe_path):
    code, out, _ = run_cli(capsys, "validate", seed_recipe_path("nyxene-11b.yaml"), *NYXENE_DONORS)
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith("warning  filter-no-match  stage 'Nyxene-11B'") and "'modelnorm'" in line
               for line in lines)
    assert any(line.startswith("error    unknown-stage") and "'Starling-DPOHermes-11B'" in line for line in lines)
    assert lines[-1] == "1 error, 3 warnings"


def test_validate_json(capsys, seed_recipe_path):
    code, out, _ = run_cli(capsys, "validate", seed_recipe_path("nyxene-11b.yaml"), *NYXENE_DONORS, "--json")
    data = json.loads(out)
    assert code == 1 and data["valid"] is False and data["errors"] == 1
    typo = next(f for f in data["findings"] if f["code"] == "unknown-stage")
    assert typo["location"] == "stage 'Nyxene-11B' › slice 1 › source 2"
    assert (typo["stage"], typo["slice"], typo["source"], typo["key"]) == (2, 0, 1, "model")


def test_validate_exit_zero_with_warnings_only(capsys, seed_recipe_path):
    code, out, _ = run_cli(capsys, "validate", seed_recipe_path("rose-20b.yaml"), *ROSE_DONORS)
    assert code == 0
    assert out.splitlines()[-1] == "0 errors, 1 warning"


def test_validate_reports_a_reversed_range_and_unresolvable_donors(capsys, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("merge_method: passthrough\nslices:\n  - sources:\n    - model: nowhere-model\n"
                      "      layer_range: [3, 1]\n")
    code, out, _ = run_cli(capsys, "validate", recipe)
    assert code == 1
    assert "error    reversed-range  stage 1 › slice 1 › source 1: layer_range [3, 1]" in out
    assert "donor-unavailable" in out and "nowhere-model" in out


def test_donor_folders_are_found_next_to_the_recipe(capsys, tmp_path, make_donor):
    make_donor("a", seed=1)
    make_donor("b", seed=2)
    recipe = tmp_path / "slerp.yaml"
    recipe.write_text(
        "merge_method: slerp\nbase_model: a\nslices:\n  - sources:\n"
        "    - {model: a, layer_range: [0, 4]}\n    - {model: b, layer_range: [0, 4]}\n"
        "parameters:\n  t:\n    - {filter: self_attn, value: [0.75, 0.25]}\n"
        "    - {filter: mlp, value: [0, 0.5, 0.3, 0.7, 1]}\n    - value: 0.5\n")
    code, out, _ = run_cli(capsys, "plan", recipe, "--json")
    assert code == 0
    layers = json.loads(out)["stages"][0]["layers"]
    attn = [layer["parameters"]["t"]["self_attn"] for layer in layers]
    mlp = [layer["parameters"]["t"]["mlp"] for layer in layers]
    assert attn == pytest.approx([0.75, 0.58333, 0.41667, 0.25], abs=1e-4)
    assert mlp == pytest.approx([0, 0.43333, 0.56667, 1], abs=1e-4)
    assert all(layer["parameters"]["t"]["other"] == 0.5 for layer in layers)  # the layer norms
    code, out, _ = run_cli(capsys, "plan", recipe)
    assert "t: self_attn 0.5833, mlp 0.4333, other 0.5" in out


@pytest.mark.parametrize("content, expected", [
    ("merge_method: passthrough\nslices: [\n", "line"),
    ("slices: []\n", "merge_method"),
])
def test_bad_yaml_is_one_line_with_its_line_number(capsys, tmp_path, content, expected):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(content)
    code, out, err = run_cli(capsys, "validate", recipe)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "broken.yaml" in err and expected in err
    assert len(err.strip().splitlines()) == 1


def test_missing_recipe_and_bad_donor_option(capsys, tmp_path, seed_recipe_path):
    code, _, err = run_cli(capsys, "plan", tmp_path / "absent.yaml")
    assert code == 1 and "does not exist" in err
    with pytest.raises(SystemExit) as exit_info:  # a usage error
        run_cli(capsys, "plan", seed_recipe_path("rose-20b.yaml"), "--donor", "Thorns-13B")
    assert exit_info.value.code == 2 and "NAME=REF" in capsys.readouterr().err


def test_usage_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: the following arguments are required: RECIPE "
                                       "(see `merger-gui validate --help`)\n")


@pytest.fixture
def broken_inputs(tmp_path, make_donor):
    """Recipe files and donor folders that must each give one clear error line."""
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "list.yaml").write_text("- merge_method\n- slices\n")
    corrupt = make_donor("corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\xff" * 16)
    (make_donor("noconfig") / "config.json").unlink()
    for name in ("corrupt", "noconfig"):
        (tmp_path / f"{name}.yaml").write_text(
            f"merge_method: passthrough\nslices:\n  - sources:\n    - {{model: {name}, layer_range: [0, 2]}}\n")
    return tmp_path


@pytest.mark.parametrize("command", ["validate", "plan", "estimate"])
@pytest.mark.parametrize("recipe, message", [
    ("absent.yaml", "absent.yaml does not exist"),
    ("folder.yaml", "folder.yaml is not a file"),
    ("list.yaml", "list.yaml: line 1: a recipe document must be a mapping"),
    ("corrupt.yaml", "donor 'corrupt': "),
    ("noconfig.yaml", "donor 'noconfig': "),
])
def test_bad_inputs_give_one_line(capsys, broken_inputs, command, recipe, message):
    code, out, err = run_cli(capsys, command, broken_inputs / recipe)
    assert code == 1
    if command == "validate" and recipe.startswith(("corrupt", "noconfig")):
        (line,) = [line for line in out.splitlines() if line.startswith("error")]
        assert "donor-unavailable" in line and message in line
    else:
        assert out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1
    if recipe == "corrupt.yaml":
        assert "safetensors header length" in out + err
    if recipe == "noconfig.yaml":
        assert "has no config.json" in out + err


def test_format_ranges():
    assert format_ranges([0, 1, 2, 3, 7, 24, 25, 26]) == "0–3, 7, 24–26"
    assert format_ranges([]) == "none"


def test_subprocess_user_error_has_no_traceback(tmp_path, seed_recipe_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: passthrough\nslices:\n  - sources: {model: [\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    root = Path(__file__).resolve().parent.parent
    failed = subprocess.run([sys.executable, "-m", "merger_gui", "validate", str(bad)], capture_output=True,
                            text=True, env=env, cwd=root)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: ") and "line" in failed.stderr
    ok = subprocess.run([sys.executable, "-m", "merger_gui", "plan", str(seed_recipe_path("rose-20b.yaml")),
                         *ROSE_DONORS, "--json"], capture_output=True, text=True, env=env, cwd=root)
    assert ok.returncode == 0 and json.loads(ok.stdout)["stages"][0]["num_layers"] == 62


def test_plan_with_a_misnamed_stage_suggests_the_stage(capsys, seed_recipe_path):
    code, out, err = run_cli(capsys, "plan", seed_recipe_path("nyxene-11b.yaml"), *NYXENE_DONORS)
    assert code == 1 and out == ""
    assert "Starling-NeuralHermes-11B" in err and "did you mean the stage 'Starling-DPOHermes-11B'" in err
