"""Our engine's output equals mergekit 0.1.5's, tensor for tensor, on small random donors.

All mergekit merges run in one subprocess (one import of torch/transformers/mergekit);
our engine runs in-process through :func:`merger_gui.engine.run.run_merge`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.plan import plan_recipe  # noqa: E402
from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.core.synthetic import DonorShape, tokenizer_files, write_donor  # noqa: E402
from merger_gui.engine.methods import random_draw_order  # noqa: E402
from model_folder import folder_config, folder_weights  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

SHAPE = DonorShape(num_layers=6, hidden_size=64, intermediate_size=128, vocab_size=96)
SEED = 1234
CONFIG_KEYS = ("num_hidden_layers", "vocab_size")


def _templated_donor(folder: Path, template: str, seed: int, jinja: bool = False) -> Path:
    write_donor(folder, SHAPE, seed=seed)
    if jinja:
        (folder / "chat_template.jinja").write_text(template)
    else:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=template)))
    return folder


def _padded_donor(folder: Path) -> Path:
    """A donor whose config and embeddings have 128 rows but whose tokenizer has 98 tokens."""
    write_donor(folder, DonorShape(num_layers=6, hidden_size=64, intermediate_size=128, vocab_size=128), seed=7)
    for name, content in tokenizer_files(98, added_tokens=2).items():
        (folder / name).write_text(json.dumps(content))
    return folder


DONORS: dict[str, DonorSpec] = {
    "A": (SHAPE, {"seed": 1}),
    "B": (SHAPE, {"seed": 2}),
    "C": (SHAPE, {"seed": 3}),
    "E": (SHAPE, {"seed": 4, "dtype": "bfloat16"}),
    "F": (SHAPE, {"seed": 5, "dtype": "bfloat16"}),
    # Like a finetune adding <|im_start|>/<|im_end|> to a 96-token base.
    "T": (DonorShape(num_layers=6, hidden_size=64, intermediate_size=128, vocab_size=98),
          {"seed": 6, "added_tokens": 2}),
    "P": _padded_donor,
    # auto: Q2 and Q3 share a template (in tokenizer_config.json and chat_template.jinja), Q1 has its own.
    "Q1": partial(_templated_donor, template="{{ 'one' }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
                  seed=8),
    "Q2": partial(_templated_donor, template="{{ 'two' }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
                  seed=9),
    "Q3": partial(_templated_donor, template="{{ 'two' }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
                  seed=10, jinja=True),
}

# name → (recipe template, donors used); {X} becomes the donor folder of X.
RECIPES: dict[str, str] = {
    "passthrough_interleave": """
        slices:
          - sources: [{model: "{A}", layer_range: [0, 3]}]
          - sources: [{model: "{B}", layer_range: [1, 4]}]
          - sources: [{model: "{A}", layer_range: [2, 5]}]
          - sources: [{model: "{B}", layer_range: [3, 6]}]
        merge_method: passthrough
        dtype: float16
    """,
    "passthrough_scale": """
        slices:
          - sources:
              - model: "{A}"
                layer_range: [0, 4]
                parameters: {scale: [{filter: o_proj, value: 0.5}, {value: 1.0}]}
          - sources: [{model: "{B}", layer_range: [2, 6]}]
        merge_method: passthrough
    """,
    "slerp_filters": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{B}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters:
          t:
            - {filter: lm_head, value: [0.75]}
            - {filter: embed_tokens, value: [0.75]}
            - {filter: self_attn, value: [0.75, 0.25]}
            - {filter: mlp, value: [0.25, 0.75]}
            - {filter: layernorm, value: [0.5, 0.5]}
            - {value: 0.5}
        dtype: float16
    """,
    "linear": """
        models:
          - {model: "{A}", parameters: {weight: 0.5}}
          - {model: "{B}", parameters: {weight: [0.2, 0.8]}}
          - {model: "{C}", parameters: {weight: 0.3}}
        merge_method: linear
        dtype: float16
    """,
    "task_arithmetic": """
        models:
          - {model: "{B}", parameters: {weight: 0.6}}
          - {model: "{C}", parameters: {weight: 0.4}}
        merge_method: task_arithmetic
        base_model: "{A}"
        parameters: {lambda: 0.9}
        dtype: float16
    """,
    "ties": """
        models:
          - {model: "{B}", parameters: {weight: 0.6, density: 0.5}}
          - {model: "{C}", parameters: {weight: 0.4, density: 0.7}}
        merge_method: ties
        base_model: "{A}"
        dtype: float16
    """,
    "model_stock": """
        models:
          - {model: "{B}"}
          - {model: "{C}"}
        merge_method: model_stock
        base_model: "{A}"
        dtype: float16
    """,
    "nuslerp": """
        models:
          - {model: "{B}", parameters: {weight: 0.3}}
          - {model: "{C}", parameters: {weight: 0.7}}
        merge_method: nuslerp
        base_model: "{A}"
        dtype: float16
    """,
    "bf16_to_fp16": """
        slices:
          - sources:
              - {model: "{E}", layer_range: [0, 6]}
              - {model: "{F}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{E}"
        parameters: {t: [0, 0.3, 1]}
        dtype: bfloat16
        out_dtype: float16
    """,
    "tokenizer_base": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{T}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.4}
        tokenizer_source: base
        dtype: float16
    """,
    "tokenizer_union": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{T}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.4}
        tokenizer: {source: union, pad_to_multiple_of: 64}
        dtype: float16
    """,
    # P's config says 128 rows (padded embeddings) but its tokenizer has 98 tokens.
    "tokenizer_base_padded": """
        slices:
          - sources:
              - {model: "{P}", layer_range: [0, 6]}
              - {model: "{A}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{P}"
        parameters: {t: 0.3}
        tokenizer_source: base
        dtype: float16
    """,
    "tokenizer_union_padded": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{P}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.6}
        tokenizer_source: union
        dtype: float16
    """,
    "multi_stage": """
        name: stage-one
        slices:
          - sources: [{model: "{A}", layer_range: [0, 4]}]
          - sources: [{model: "{B}", layer_range: [2, 6]}]
        merge_method: passthrough
        dtype: float16
        ---
        name: stage-two
        slices:
          - sources: [{model: "{C}", layer_range: [0, 4]}]
          - sources: [{model: "{A}", layer_range: [2, 6]}]
        merge_method: passthrough
        dtype: float16
        ---
        slices:
          - sources:
              - {model: stage-one, layer_range: [0, 8]}
              - {model: stage-two, layer_range: [0, 8]}
        merge_method: slerp
        base_model: stage-one
        parameters:
          t:
            - {filter: self_attn, value: [0.75, 0.25]}
            - {filter: mlp, value: [0.25, 0.75]}
            - {value: 0.5}
        dtype: float16
    """,
}
DARE_RECIPES: dict[str, str] = {
    name: f"""
        models:
          - {{model: "{{B}}", parameters: {{weight: 0.6, density: 0.5}}}}
          - {{model: "{{C}}", parameters: {{weight: 0.4, density: 0.7}}}}
        merge_method: {name}
        base_model: "{{A}}"
        dtype: float16
    """
    for name in ("dare_ties", "dare_linear")
}

# chat_template values; each merges A alone (or the Q donors for auto).
CHAT_TEMPLATES = {
    **{name: name for name in ("chatml", "llama3", "alpaca", "mistral", "exaone")},
    "literal": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}",
    "auto": "auto",
}
CHAT_RECIPES: dict[str, str] = {
    f"chat_{key}": f"""
        slices:
          - sources:
              - {{model: "{{{'Q1' if key == 'auto' else 'A'}}}", layer_range: [0, 2]}}
          - sources:
              - {{model: "{{{'Q2' if key == 'auto' else 'A'}}}", layer_range: [2, 4]}}
          - sources:
              - {{model: "{{{'Q3' if key == 'auto' else 'A'}}}", layer_range: [4, 6]}}
        merge_method: passthrough
        chat_template: {json.dumps(value)}
        dtype: float16
    """
    for key, value in CHAT_TEMPLATES.items()
}
CONVERSATION = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": " Hi there"},
    {"role": "assistant", "content": "Hello!\n"},
    {"role": "user", "content": "How are you?"},
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("parity"), DONORS, {**RECIPES, **DARE_RECIPES, **CHAT_RECIPES},
                           SEED)


def _ours_once(workspace: ParityWorkspace, name: str) -> Path:
    """Our output of recipe ``name``: an earlier test's, or merged now."""
    folder = workspace.ours_folder(name)
    return folder if folder.exists() else run_ours(workspace, name).folder


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_engine_output_equals_mergekit(workspace, name):
    # Same operations in the same order: even the float math agrees bit for bit.
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name), CONFIG_KEYS)


def test_tokenizer_base_output_vocabulary(workspace):
    ours = _ours_once(workspace, "tokenizer_base")
    vocab = json.loads((ours / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 96 and folder_config(ours)["vocab_size"] == 96
    assert folder_weights(ours)["model.embed_tokens.weight"].shape[0] == 96


@pytest.mark.parametrize("name", ["tokenizer_base_padded", "tokenizer_union_padded", "tokenizer_union"])
def test_planned_vocabulary_is_the_output_tokenizers(workspace, name):
    """The plan sizes embeddings by the output tokenizer (not config vocab_size), as mergekit does."""
    recipe = load_recipe_text(workspace.recipe_text(name))
    planned = plan_recipe(recipe, workspace.donor_infos(name)).stages[-1].vocab_size
    rows = folder_weights(_ours_once(workspace, name))["model.embed_tokens.weight"].shape[0]
    theirs = workspace.mergekit_folder(name)
    theirs_rows = folder_weights(theirs)["model.embed_tokens.weight"].shape[0]
    assert planned == rows == theirs_rows == folder_config(theirs)["vocab_size"]
    assert planned == {"tokenizer_base_padded": 98, "tokenizer_union_padded": 98, "tokenizer_union": 128}[name]


@pytest.mark.parametrize("name", sorted(CHAT_RECIPES))
def test_chat_template_renders_like_mergekits(workspace, name):
    """Named, literal and auto chat templates: transformers renders our output's like mergekit's."""
    from transformers import AutoTokenizer

    rendered = []
    for folder in (run_ours(workspace, name).folder, workspace.mergekit_folder(name)):
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        messages = CONVERSATION[1:] if name == "chat_mistral" else CONVERSATION
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    if name in ("chat_exaone", "chat_llama3"):
        # mergekit's files render stray whitespace between turns (a newline after each llama3
        # turn, indentation in exaone); ours render the models' own formats without it.
        rendered = ["".join(r.split()) for r in rendered]
    assert rendered[0] == rendered[1]
    assert rendered[0]


@pytest.mark.parametrize("name", sorted(DARE_RECIPES))
def test_seeded_dare_equals_mergekit(workspace, name):
    """The same seed draws the same DARE masks as mergekit's --random-seed."""
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name), CONFIG_KEYS)


def test_random_draw_order_follows_input_names():
    sources = [["model.embed_tokens.weight"], ["model.layers.10.x"], ["model.layers.2.x"], ["lm_head.weight"]]
    assert random_draw_order(sources) == [3, 0, 1, 2]
    assert random_draw_order([["x.2"], ["x.1", "x.3"], ["x.2"]]) == [0, 2, 1]  # ties: plan order


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_slerp_of_tensors_larger_than_a_chunk_equals_mergekit(dtype):
    """Tensors over mergekit's 1M-element chunk take its chunked norms and dot product."""
    from mergekit.merge_methods.slerp import slerp as mergekit_slerp

    from merger_gui.engine.methods import slerp

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1100, 1000, generator=generator).to(dtype)
    b = torch.randn(1100, 1000, generator=generator).to(dtype)
    theirs = mergekit_slerp(torch.tensor([0.3]), a.unsqueeze(0), b.unsqueeze(0))[0]
    assert torch.equal(slerp(0.3, a, b), theirs)
