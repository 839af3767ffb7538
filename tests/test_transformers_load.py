"""Models our engine writes load in transformers and give finite logits; tokenizers load."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from merger_gui.core.inspect import inspect_folder  # noqa: E402
from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.core.synthetic import DonorShape  # noqa: E402
from merger_gui.engine.run import MergeOptions, run_merge  # noqa: E402

SHAPE = DonorShape(num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=96)

RECIPES = {
    "passthrough": """
        slices:
          - sources: [{{model: "{a}", layer_range: [0, 3]}}]
          - sources: [{{model: "{b}", layer_range: [1, 4]}}]
        merge_method: passthrough
        dtype: float16
    """,
    "slerp": """
        slices:
          - sources:
              - {{model: "{a}", layer_range: [0, 4]}}
              - {{model: "{b}", layer_range: [0, 4]}}
        merge_method: slerp
        base_model: "{a}"
        parameters: {{t: [{{filter: self_attn, value: [0, 1]}}, {{value: 0.5}}]}}
        dtype: bfloat16
        out_dtype: float16
    """,
    "added_tokens": """
        slices:
          - sources:
              - {{model: "{a}", layer_range: [0, 4]}}
              - {{model: "{b}", layer_range: [0, 4]}}
        merge_method: slerp
        base_model: "{a}"
        parameters: {{t: 0.5}}
        tokenizer_source: "{b}"
    """,
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_merged_model_loads_and_runs(make_donor, tmp_path, name):
    a = make_donor("a", SHAPE, seed=1)
    b = make_donor("b", DonorShape(num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=98),
                   seed=2, added_tokens=2) if name == "added_tokens" else make_donor("b", SHAPE, seed=2)
    text = "\n".join(line[8:] for line in RECIPES[name].format(a=a, b=b).splitlines())
    out = tmp_path / "merged"
    list(run_merge(load_recipe_text(text), {str(a): inspect_folder(a), str(b): inspect_folder(b)}, out, MergeOptions()))

    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    words = "tok5 tok17 <extra_97>" if name == "added_tokens" else "tok5 tok17 tok40"
    ids = tokenizer(words, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    vocab = 98 if name == "added_tokens" else 96
    assert logits.shape == (1, ids.shape[1], vocab)
    assert torch.isfinite(logits).all()
    assert model.config.num_hidden_layers == (6 if name == "passthrough" else 4)
    assert ids[0, -1].item() == (97 if name == "added_tokens" else 40)
