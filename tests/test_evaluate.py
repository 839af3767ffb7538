"""Evaluating a model folder: perplexity as transformers computes it, agreement, generation, the CLI."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from merger_gui.cli import main  # noqa: E402
from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.core.inspect import inspect_folder  # noqa: E402
from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.engine.evaluate import (  # noqa: E402
    EvaluationCancelled, EvaluationDone, EvaluationOptions, evaluate_model, far_worse, sample_text,
)
from merger_gui.engine.run import run_merge  # noqa: E402

TEXT = " ".join(f"tok{3 + (i * 7) % 90}" for i in range(60))


def evaluation(model, against=(), **options):
    events = list(evaluate_model(model, against, EvaluationOptions(**{"text": TEXT, **options})))
    assert isinstance(events[-1], EvaluationDone)
    return events[-1].evaluation


def test_perplexity_is_what_transformers_computes(make_donor):
    a = make_donor("a", seed=1)
    model = transformers.AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32)
    ids = transformers.AutoTokenizer.from_pretrained(a)(TEXT, return_tensors="pt")["input_ids"][:, :40]
    with torch.inference_mode():
        expected = float(torch.exp(model(ids, labels=ids).loss))  # mean NLL of every token after the first

    result = evaluation(a, max_tokens=40)

    assert result.tokens == 40
    assert result.perplexity == pytest.approx(expected, rel=1e-6)


def test_agreement_with_itself_is_one_and_with_another_model_less(make_donor):
    a, b = make_donor("a", seed=1), make_donor("b", seed=2)
    result = evaluation(a, [a, b])
    assert [d.donor for d in result.against] == [str(a), str(b)]
    assert result.against[0].agreement == 1.0
    assert result.against[0].perplexity == result.perplexity
    assert result.against[1].agreement < 1.0
    assert result.against[1].perplexity != result.perplexity


def test_slerp_at_t0_evaluates_exactly_like_its_base(make_donor, tmp_path):
    a, b = make_donor("a", seed=1), make_donor("b", seed=2)
    recipe = load_recipe_text(f"""
slices:
  - sources:
      - {{model: "{a}", layer_range: [0, 4]}}
      - {{model: "{b}", layer_range: [0, 4]}}
merge_method: slerp
base_model: "{a}"
parameters: {{t: 0.0}}
""")
    list(run_merge(recipe, {str(a): inspect_folder(a), str(b): inspect_folder(b)}, tmp_path / "merged"))

    merged = evaluation(tmp_path / "merged", [a], prompt="tok5 tok9", max_new_tokens=6)
    base = evaluation(a, prompt="tok5 tok9", max_new_tokens=6)

    assert merged.perplexity == base.perplexity
    assert merged.against[0].agreement == 1.0
    assert merged.generation == base.generation
    assert merged.generation  # greedy generation produced text


def test_generation_goes_through_the_chat_template(make_donor):
    a = make_donor("a", seed=1)
    config = json.loads((a / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}tok7 {{ m['content'] }} tok8{% endfor %}"
    (a / "tokenizer_config.json").write_text(json.dumps(config))
    plain = make_donor("plain", seed=1)

    templated = evaluation(a, prompt="tok5", max_new_tokens=5).generation
    direct = evaluation(plain, prompt="tok7 tok5 tok8", max_new_tokens=5).generation

    assert templated == direct


def test_cancel_stops_between_steps(make_donor):
    a = make_donor("a", seed=1)
    cancel = threading.Event()
    events = evaluate_model(a, [a], EvaluationOptions(text=TEXT), cancel)
    next(events)
    cancel.set()
    with pytest.raises(EvaluationCancelled):
        list(events)


def test_far_worse_flags_a_merge_more_than_twice_the_best_donor():
    assert far_worse(25.0, [10.0, 30.0])
    assert not far_worse(20.0, [10.0, 30.0])
    assert not far_worse(25.0, [])
    assert far_worse(float("nan"), [10.0])


def test_the_sample_text_ships_and_is_long_enough():
    assert len(sample_text().split()) > 600


def test_cli_json_has_exactly_the_keys(make_donor, capsys):
    a, b = make_donor("a", seed=1), make_donor("b", seed=2)
    text = a.parent / "text.txt"
    text.write_text(TEXT)
    assert main(["evaluate", str(a), "--against", str(b), "--text", str(text), "--max-tokens", "30",
                 "--prompt", "tok5", "--max-new-tokens", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"model", "tokens", "perplexity", "against", "generation"}
    assert [set(d) for d in data["against"]] == [{"donor", "perplexity", "agreement"}]
    assert data["tokens"] == 30 and isinstance(data["generation"], str)


@pytest.mark.parametrize("case", ["missing", "no-tokenizer", "architecture", "text", "truncated-weights"])
def test_cli_user_errors_are_one_line(make_donor, tmp_path, capsys, case):
    a = make_donor("a", seed=1)
    args = ["evaluate", str(a)]
    if case == "missing":
        args = ["evaluate", str(tmp_path / "nope")]
    elif case == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (a / name).unlink()
    elif case == "architecture":
        config = json.loads((a / "config.json").read_text())
        config.update(model_type="no-such-model", architectures=["NoSuchForCausalLM"])
        (a / "config.json").write_text(json.dumps(config))
    elif case == "truncated-weights":  # safetensors' own reader raised a SafetensorError traceback
        weights = a / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        args += ["--text", str(tmp_path / "missing.txt")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_text_shorter_than_two_tokens_is_refused(make_donor):
    a = make_donor("a", seed=1)
    with pytest.raises(UserError, match="at least 2"):
        list(evaluate_model(a, (), EvaluationOptions(text="tok5", max_tokens=1)))


def test_a_donor_copied_without_weights_is_a_user_error(make_donor, tmp_path):
    a = make_donor("a", seed=1)
    hollow = tmp_path / "hollow"
    shutil.copytree(a, hollow)
    (hollow / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no .safetensors or .bin weights"):
        list(evaluate_model(hollow, (), EvaluationOptions(text=TEXT)))
