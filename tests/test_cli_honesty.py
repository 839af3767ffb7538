"""Honest answers: recipe errors fail `plan`/`estimate`, usage errors exit 2, YAML errors say what to do,
and the window explains a missing display or system library instead of aborting."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from merger_gui.cli import main, opens_designer
from merger_gui.cli.estimate_command import at_least_one, gib_size
from merger_gui.cli.merge_command import MAX_SEED, parse_seed, parse_size
from merger_gui.core.errors import RecipeError
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.qt.display_check import display_problem

BAD_RANGES = """merge_method: passthrough
slices:
  - sources:
    - {model: A, layer_range: [10, 4]}
  - sources:
    - {model: A, layer_range: [0, 8]}
  - sources:
    - {model: A, layer_range: [30, 50]}
"""
DONOR = ["--donor", "A=profile:llama-2-7b"]
REVERSED = ("error: stage 1 › slice 1 › source 1: layer_range [10, 4] of A is reversed (mergekit would write "
            "num_hidden_layers: -6); write it as [4, 10]")
PAST_END = "error: stage 1 › slice 3 › source 1: layer_range [30, 50] ends past the 32 layers of A"


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bad_ranges(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_RANGES)
    return path


# ---- recipe errors: no confident answers ---------------------------------------------------------

@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_estimate_of_a_recipe_with_errors_reports_them_and_prints_no_figures(capsys, bad_ranges, json_flag):
    code, out, err = run_cli(capsys, "estimate", bad_ranges, *DONOR, *json_flag)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0] == REVERSED and lines[1].startswith(PAST_END)


def test_plan_of_a_recipe_with_errors_prints_what_it_could_and_exits_1(capsys, bad_ranges):
    code, out, err = run_cli(capsys, "plan", bad_ranges, *DONOR)
    assert code == 1
    assert "A 0–7" in out  # the valid slice is still planned
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0] == REVERSED and lines[1].startswith(PAST_END)


def test_plan_and_estimate_of_a_valid_recipe_still_exit_0(capsys, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(BAD_RANGES.replace("[10, 4]", "[4, 10]").replace("[30, 50]", "[30, 32]"))
    for command in ("plan", "estimate"):
        code, out, err = run_cli(capsys, command, path, *DONOR)
        assert (code, err) == (0, "") and out


# ---- usage errors exit 2 with one line ----------------------------------------------------------

@pytest.mark.parametrize("command", [["validate"], ["plan"], ["estimate"], ["merge", "out"]])
def test_donor_without_equals_is_a_usage_error(capsys, bad_ranges, tmp_path, command):
    argv = [command[0], bad_ranges, *command[1:], "--donor", "A"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: argument --donor: bad donor override 'A': expected NAME=REF")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("word, command", [("mrege", "merge"), ("plna", "plan"), ("vaildate", "validate"),
                                           ("estimat", "estimate")])
def test_unknown_command_suggests_the_closest(capsys, word, command):
    code, out, err = run_cli(capsys, word, "recipe.yaml")
    assert (code, out) == (2, "")
    assert err == f"error: unknown command {word!r}, did you mean {command}?\n"


def test_unknown_command_without_a_close_one_lists_the_commands(capsys):
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and err.startswith("error: unknown command 'frobnicate' (commands: validate, plan,")


def test_unknown_command_never_starts_qt():
    result = subprocess.run([sys.executable, "-c", "import sys; from merger_gui.cli import main; "
                             "code = main(['plna', 'x']); "
                             "sys.exit(code if 'PySide6' not in sys.modules else 99)"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == "error: unknown command 'plna', did you mean plan?\n"


def test_what_opens_the_designer(tmp_path):
    recipe = tmp_path / "recipe"  # a recipe file without a suffix
    recipe.write_text("merge_method: passthrough\n")
    assert opens_designer([]) and opens_designer(["--theme", "dark"]) and opens_designer(["my.yaml"])
    assert opens_designer([str(recipe)]) and opens_designer(["sub/dir.yml", "--donor", "a=b"])
    assert not opens_designer(["plna", "x.yaml"]) and not opens_designer(["plan"])
    assert not opens_designer(["--help"])


@pytest.mark.parametrize("option", [["--shard-size", "1e400"], ["--shard-size", "1e-400"],
                                    ["--seed", str(2**64)], ["--seed", "-1"], ["--seed", "1.5"]])
def test_merge_numbers_out_of_range_are_usage_errors(capsys, bad_ranges, tmp_path, option):
    code, out, err = run_cli(capsys, "merge", bad_ranges, tmp_path / "out", *DONOR, *option)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: argument {option[0]}: invalid ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--gpu-memory", "1e300"], ["--context", "0"], ["--batch", "-1"],
                                    ["--context", "1e3"]])
def test_estimate_numbers_out_of_range_are_usage_errors(capsys, option):
    code, out, err = run_cli(capsys, "estimate", "profile:llama-2-7b", *option)
    assert code == 2 and out == "" and err.startswith(f"error: argument {option[0]}: ") and err.count("\n") == 1


def test_seed_accepts_mergekit_range():
    assert parse_seed("0") == 0 and parse_seed(str(MAX_SEED)) == MAX_SEED == 2**32 - 1
    with pytest.raises(argparse.ArgumentTypeError):
        parse_seed(str(MAX_SEED + 1))


NUMBERS = st.one_of(
    st.text(max_size=30),
    st.builds(lambda m, e, u: f"{m}e{e}{u}", st.integers(-10**6, 10**6), st.integers(-999, 999),
              st.sampled_from(["", "GB", "MiB", "k", "tb"])),
    st.integers(-2**80, 2**80).map(str),
)


@settings(max_examples=300, deadline=None)
@given(NUMBERS)
def test_number_options_give_a_value_or_a_usage_error(text):
    """Any text gives a number in range or ArgumentTypeError (argparse's one-line usage error), never
    OverflowError, ValueError or a value out of range."""
    for parse, low, high in ((parse_size, 1, None), (parse_seed, 0, MAX_SEED), (gib_size, 0, None),
                             (at_least_one("context"), 1, None)):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError:
            continue
        assert isinstance(value, int) and value >= low and (high is None or value <= high)


# ---- YAML errors say where and what to do -------------------------------------------------------

@pytest.mark.parametrize("text, line, hint", [
    ("merge_method: passthrough\nslices:\n\t- sources: []\n", 3, "; indent with spaces, not tabs"),
    ("merge_method: 'passthrough\nslices: []\n", 2, "; the quote opened on line 1 is never closed"),
    ("merge_method: passthrough\nslices:\n  - sources:\n    - {model: A, layer_range: [0, 4}\n", 4,
     "close the [ opened on line 4 with ]"),
    ("merge_method: passthrough\nslices:\n  - sources:\n    - model: A\n     layer_range: [0, 4]\n", 5,
     "check the indentation"),
    ("merge_method: passthrough\nmerge_method: slerp\n", 2, "; keep one of them"),
])
def test_yaml_errors_keep_the_line_and_say_what_to_do(text, line, hint):
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text)
    assert info.value.line == line and str(info.value).startswith(f"line {line}: invalid YAML: ")
    assert hint in str(info.value)


def test_validate_json_on_unparsable_yaml_prints_json(capsys, tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("merge_method: passthrough\nslices:\n\t- sources: []\n")
    code, out, err = run_cli(capsys, "validate", path, "--json")
    assert code == 1 and err == ""
    data = json.loads(out)
    assert data["valid"] is False and data["errors"] == 1
    (finding,) = data["findings"]
    assert finding["code"] == "invalid-recipe" and finding["line"] == 3 and finding["severity"] == "error"
    assert "indent with spaces" in finding["message"] and str(path) in finding["message"]
    code, out, err = run_cli(capsys, "validate", tmp_path / "absent.yaml", "--json")
    assert code == 1 and json.loads(out)["findings"][0]["code"] == "unreadable-recipe"
    code, out, err = run_cli(capsys, "validate", path)  # text: one line on stderr
    assert code == 1 and out == "" and err.count("\n") == 1 and "line 3" in err


# ---- the window without a display ---------------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland checks are Linux's")


@linux_only
def test_no_display_is_one_line_not_a_qt_abort(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["HOME"] = str(tmp_path)  # whatever happens, not the user's settings
    result = subprocess.run([sys.executable, "-m", "merger_gui"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("merger-gui: error: no display found")
    assert "--screenshot" in result.stderr and "merger-gui --help" in result.stderr
    assert "Reinstalling" not in result.stderr


@linux_only
def test_missing_xcb_library_names_the_package():
    missing_cursor = lambda soname: soname != "libxcb-cursor.so.0"  # noqa: E731
    problem = display_problem({"DISPLAY": ":0"}, missing_cursor)
    assert problem is not None and "sudo apt install libxcb-cursor0)" in problem
    assert display_problem({"DISPLAY": ":0"}, lambda _: True) is None
    assert display_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, missing_cursor) == problem
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, missing_cursor) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, missing_cursor) is None
    assert display_problem({"QT_QPA_PLATFORM": "xcb"}, missing_cursor).startswith("no display found")
