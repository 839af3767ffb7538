"""The recipe's chat_template: names, literal templates and auto, written to the output's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from merger_gui.core.errors import UserError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.engine import run as run_module
from merger_gui.engine.chat_template import NAMED_TEMPLATES, donor_chat_template, resolve_chat_template
from merger_gui.engine.events import MergeWarning
from merger_gui.engine.run import MergeOptions, run_merge

LITERAL = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"


def recipe(chat_template: str, models=("a", "b")) -> str:
    slices = "".join(f"- sources: [{{model: {m}, layer_range: [{k}, {k + 1}]}}]\n"
                     for k, m in enumerate(models))
    return f"merge_method: passthrough\nchat_template: {json.dumps(chat_template)}\nslices:\n{slices}"


def merge(text: str, donors: dict[str, Path], out: Path, **options) -> list:
    infos = {name: inspect_folder(path) for name, path in donors.items()}
    return list(run_merge(load_recipe_text(text), infos, out, MergeOptions(**options)))


def with_template(folder: Path, template: str, file: str = "tokenizer_config.json") -> Path:
    if file == "chat_template.jinja":
        (folder / file).write_text(template)
    else:
        config = json.loads((folder / file).read_text()) if (folder / file).exists() else {}
        (folder / file).write_text(json.dumps(dict(config, chat_template=template)))
    return folder


@pytest.fixture
def pair(make_donor):
    return {"a": make_donor("a", seed=1), "b": make_donor("b", seed=2)}


def test_named_template_is_written_to_jinja_and_tokenizer_config(pair, tmp_path):
    with_template(pair["a"], "{{ 'old' }}", "chat_template.json")
    out = tmp_path / "out"
    merge(recipe("chatml"), pair, out)
    assert (out / "chat_template.jinja").read_text() == NAMED_TEMPLATES["chatml"]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == NAMED_TEMPLATES["chatml"]
    assert not (out / "chat_template.json").exists()
    assert (out / "tokenizer.json").is_file()


def test_literal_template_is_kept_verbatim(pair, tmp_path):
    merge(recipe(LITERAL), pair, tmp_path / "out")
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == LITERAL


@pytest.mark.parametrize("value", ["chatgpt", "a long value that is no template"])
def test_unknown_template_is_refused_before_reading(pair, tmp_path, monkeypatch, value):
    monkeypatch.setattr(run_module.TensorReader, "locate", lambda *_: pytest.fail("a tensor was read"))
    with pytest.raises(UserError, match="unknown chat_template .*chatml"):
        merge(recipe(value), pair, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_auto_takes_the_most_common_donor_template(make_donor, tmp_path):
    donors = {
        "a": with_template(make_donor("a", seed=1), "{{ 'first' }}"),
        "b": with_template(make_donor("b", seed=2), "{{ 'second' }}\n", "chat_template.jinja"),
        "c": with_template(make_donor("c", seed=3), "{{ 'second' }}"),
    }
    merge(recipe("auto", ("a", "b", "c")), donors, tmp_path / "out", copy_tokenizer=True)
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{{ 'second' }}"


def test_auto_tie_goes_to_the_first_model_and_none_warns(make_donor, pair, tmp_path):
    assert resolve_chat_template("auto", [with_template(pair["b"], "{{ 'b' }}"),
                                          with_template(pair["a"], "{{ 'a' }}")]) == "{{ 'b' }}"
    plain = {"a": make_donor("plain", seed=3)}
    events = merge(recipe("auto", ("a",)), plain, tmp_path / "out")
    assert any(isinstance(e, MergeWarning) and "no donor has a chat template" in e.message for e in events)
    assert not (tmp_path / "out" / "chat_template.jinja").exists()


def test_without_tokenizer_the_template_is_not_saved(pair, tmp_path):
    events = merge(recipe("chatml"), pair, tmp_path / "out", copy_tokenizer=False)
    assert any(isinstance(e, MergeWarning) and "no tokenizer" in e.message for e in events)
    assert not (tmp_path / "out" / "chat_template.jinja").exists()


def test_donor_chat_template_reads_named_template_lists(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]}))
    assert donor_chat_template(tmp_path) == "y"
    assert donor_chat_template(tmp_path / "missing") is None
