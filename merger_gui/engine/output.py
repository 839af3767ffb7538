"""The output folder: written in a temporary sibling and renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from merger_gui.core.donor import DTYPE_NAMES, DonorInfo, dtype_code
from merger_gui.core.errors import UserError
from merger_gui.core.plan import StagePlan
from merger_gui.core.recipe import Recipe, Stage

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json",
)
RECIPE_FILE = "mergekit_config.yml"
PARTIAL_MARK = ".partial-"


def partial_folder(target: Path) -> Path:
    """Create and return an empty hidden sibling of ``target`` to write into."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent / f".{target.name}{PARTIAL_MARK}{os.urandom(4).hex()}"
    folder.mkdir()
    return folder


def commit_folder(partial: Path, target: Path, overwrite: bool) -> None:
    """Move the complete ``partial`` folder to ``target``; an existing target is replaced only
    with ``overwrite`` and only now, after the new one is complete.

    Raises:
        UserError: ``target`` exists and ``overwrite`` is false.
    """
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise UserError(f"{target} already exists; choose another folder or replace it (--overwrite)")
        old = target.parent / f".{target.name}.old-{os.urandom(4).hex()}"
        target.rename(old)
        partial.rename(target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
        return
    partial.rename(target)


def remove_folder(folder: Path) -> None:
    """Remove a partial folder and everything in it; never fails."""
    shutil.rmtree(folder, ignore_errors=True)


def output_dtype_name(stage: Stage, config_donor: DonorInfo) -> str:
    """torch-style name (``bfloat16``) of the dtype the output's weights are stored in."""
    name = stage.out_dtype or stage.dtype or config_donor.dtype
    return DTYPE_NAMES[dtype_code(name)]


def output_config(plan: StagePlan, stage: Stage, config_donor: DonorInfo) -> dict[str, Any]:
    """The config donor's config.json with layer count, vocabulary size and dtype of the output."""
    config = dict(config_donor.config)
    dtype = output_dtype_name(stage, config_donor)
    # transformers < 5 reads torch_dtype, 5.x reads dtype: write both.
    config.update(num_hidden_layers=plan.num_layers, vocab_size=plan.vocab_size, torch_dtype=dtype, dtype=dtype)
    if any(t.name.endswith("lm_head.weight") for t in plan.tensors):
        config["tie_word_embeddings"] = False
    return config


def write_metadata(folder: Path, plan: StagePlan, stage: Stage, config_donor: DonorInfo,
                   copy_tokenizer: bool) -> None:
    """config.json, the tokenizer files (when ``copy_tokenizer``), the recipe and a model card."""
    (folder / "config.json").write_text(json.dumps(output_config(plan, stage, config_donor), indent=2) + "\n")
    if copy_tokenizer and config_donor.path:
        copy_files(Path(config_donor.path), folder, TOKENIZER_FILES)
    from merger_gui.core.recipe_yaml import dump_recipe  # the YAML writer is only needed here

    recipe_text = dump_recipe(Recipe((stage,)))
    (folder / RECIPE_FILE).write_text(recipe_text)
    (folder / "README.md").write_text(model_card(plan, stage, recipe_text))


def copy_files(source: Path, target: Path, names: Iterable[str]) -> None:
    """Copy the files ``names`` that donor folder ``source`` has into ``target``.

    Raises:
        DonorError: a file is special or a link leading outside the donor (e.g. to /etc/passwd).
    """
    from merger_gui.core.safe_files import donor_file, is_present

    for name in names:
        file = source / name
        if is_present(file):
            shutil.copyfile(donor_file(file, source), target / name)


def model_card(plan: StagePlan, stage: Stage, recipe_text: str) -> str:
    """A short README: how the model was made and the recipe that made it."""
    models = "\n".join(f"- {m}" for m in stage.referenced_models)
    base = f" with `{stage.base_model}` as the base" if stage.base_model else ""
    return (
        "---\ntags:\n- merge\n- mergekit\n- merger_gui\n---\n"
        f"# {plan.name or 'merged model'}\n\n"
        f"This model was merged with merger_gui using the `{plan.merge_method}` method{base} "
        f"({plan.num_layers} layers).\n\n## Models\n\n{models}\n\n"
        f"## Recipe\n\n```yaml\n{recipe_text.rstrip()}\n```\n"
    )
