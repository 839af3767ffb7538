"""Build a frankenMoE (Mixtral) from dense donors as mergekit-moe 0.1.5 does, streamed tensor by tensor.

Attention, norms and embeddings come from the base, every layer's MLP from each expert
(fused ``experts.gate_up_proj`` / ``experts.down_proj``, the transformers 5 layout mergekit
0.1.5 writes) and the router rows from the experts' prompts:

- ``cheap_embed``: the normalised sum of the base's token embeddings over the prompts'
  tokens (positive minus negative), the same for every layer;
- ``hidden``: the base model's hidden state of the last token before each layer (transformers,
  bf16, CPU), averaged over the prompts, positive minus negative, normalised;
- ``random`` / ``uniform_random``: drawn from a generator seeded with the merge's seed.
  mergekit-moe draws them unseeded, so no run of either tool repeats another.

The output is written into a hidden sibling folder and renamed into place when complete, like
:func:`~.run.run_merge`; cancelling or an error removes it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.errors import DonorError, RecipeError, UserError
from merger_gui.core.moe_recipe import (
    MoeExpert, MoeRecipe, dump_moe, moe_output_config, moe_output_dtype, moe_output_tensors, moe_problems,
)
from merger_gui.core.output_folders import replace_refusal

from .events import MergeCancelled, MergeDone, MergeEvent, StageFinished, StageStarted, TensorProgress
from .output import (
    TOKENIZER_FILES, commit_folder, copy_files, partial_folder, release_partial, remove_folder, write_file,
)
from .reader import TensorReader
from .run import MergeOptions
from .writer import ShardedWriter

if TYPE_CHECKING:
    import torch

MOE_RECIPE_FILE = "mergekit_moe_config.yml"
EXPERT_PARTS = (("gate_up_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",)))


def run_moe(recipe: MoeRecipe, donors: Mapping[str, DonorInfo], out_dir: str | Path,
            options: MergeOptions | None = None,
            cancel: threading.Event | None = None) -> Generator[MergeEvent, None, None]:
    """Build the MoE of ``recipe`` into ``out_dir``, yielding progress; the last event is :class:`MergeDone`.

    Raises:
        RecipeError: a problem mergekit-moe would refuse (see :func:`moe_problems`).
        MergeCancelled: ``cancel`` was set; nothing was left behind.
        UserError: an existing output without ``overwrite``, an unreadable donor…
    """
    options = options or MergeOptions()
    problems = moe_problems(recipe, donors)
    if problems:
        raise RecipeError(problems[0])
    out = Path(out_dir).absolute()
    _check_target(out, recipe, donors, options)
    started = time.monotonic()
    base = donors[recipe.base_model]
    layout = moe_output_tensors(recipe, base)
    yield StageStarted(0, 1, "moe", len(layout), False)
    reader = TensorReader(donors)
    try:
        routers = gate_vectors(recipe, base, reader, options.seed, cancel)
        folder = partial_folder(out)
        written = yield from _write_folder(folder, recipe, base, layout, reader, routers, options, cancel)
    finally:
        reader.close()
    commit_folder(folder, out, options.overwrite)
    seconds = time.monotonic() - started
    yield StageFinished(0, 1, "moe", out, False, seconds)
    yield MergeDone(out, len(layout), written, seconds)


def _check_target(out: Path, recipe: MoeRecipe, donors: Mapping[str, DonorInfo], options: MergeOptions) -> None:
    for name in recipe.referenced_models:
        if donors[name].path is None:
            raise DonorError(f"donor {name} has no local weights (download it first)")
    if out.exists() or out.is_symlink():
        if not options.overwrite:
            raise UserError(f"{out} already exists; choose another folder or replace it (--overwrite)")
        folders = [(name, Path(donors[name].path or "")) for name in recipe.referenced_models]
        refusal = replace_refusal(out, options.recipe_path, folders)
        if refusal:
            raise UserError(refusal)


def _write_folder(folder: Path, recipe: MoeRecipe, base: DonorInfo, layout: Sequence[TensorInfo],
                  reader: TensorReader, routers: torch.Tensor, options: MergeOptions,
                  cancel: threading.Event | None) -> Generator[MergeEvent, None, int]:
    """Write config, tokenizer, recipe and weights into ``folder``; returns the weight bytes.
    Any error, a cancel or closing the generator removes ``folder``."""
    import json

    writer = ShardedWriter(folder, layout, options.shard_size)
    try:
        write_file(folder / "config.json", json.dumps(moe_output_config(recipe, base), indent=2) + "\n")
        if options.copy_tokenizer and base.path:
            copy_files(Path(base.path), folder, TOKENIZER_FILES)
        write_file(folder / MOE_RECIPE_FILE, dump_moe(recipe))
        total = sum(t.nbytes for t in layout)
        for index, info in enumerate(layout, 1):
            if cancel is not None and cancel.is_set():
                raise MergeCancelled("merge cancelled")
            tensor = _output_tensor(info.name, recipe, reader, routers, _torch_dtype(recipe, base))
            writer.write(info.name, tensor.contiguous().reshape(-1).view(_uint8()).numpy().data)
            yield TensorProgress(info.name, index, len(layout), index, len(layout), writer.bytes_written, total, None)
        writer.close()
        release_partial(folder)
    except BaseException:
        writer.abort()
        remove_folder(folder)
        raise
    return writer.bytes_written


def _uint8() -> torch.dtype:
    import torch

    return torch.uint8


def _torch_dtype(recipe: MoeRecipe, base: DonorInfo) -> torch.dtype:
    import torch

    return getattr(torch, moe_output_dtype(recipe, base))


def _output_tensor(name: str, recipe: MoeRecipe, reader: TensorReader, routers: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """Output tensor ``name``: a router, an expert stack or the base's own tensor, in ``dtype``."""
    import torch

    parts = name.split(".")
    if ".mlp.gate.weight" in name:
        return routers[int(parts[2])].to(dtype)
    if ".mlp.experts." in name:
        layer, fused = int(parts[2]), parts[-1]
        sources = dict(EXPERT_PARTS)[fused]
        stacked = torch.stack([torch.cat([_expert_part(reader, recipe, e, layer, p) for p in sources])
                               for e in recipe.experts])
        return stacked.to(dtype)
    return reader.read(reader.locate(recipe.base_model, name)).to(dtype)


def _expert_part(reader: TensorReader, recipe: MoeRecipe, expert: MoeExpert, layer: int, part: str) -> torch.Tensor:
    tensor = reader.read(reader.locate(expert.source_model, f"model.layers.{layer}.mlp.{part}.weight"))
    if part == "down_proj" and expert.residual_scale is not None:
        tensor = tensor * expert.residual_scale  # in the stored dtype, as mergekit scales before converting
    return tensor


def gate_vectors(recipe: MoeRecipe, base: DonorInfo, reader: TensorReader, seed: int | None = 0,
                 cancel: threading.Event | None = None) -> torch.Tensor:
    """Router weights of every layer, (layers, experts, hidden), before the cast to the output dtype.

    Raises:
        MergeCancelled: ``cancel`` was set before the model load or an expert's prompts.
    """
    import torch

    _stop_if_cancelled(cancel)
    shape = (base.num_layers, len(recipe.experts), base.hidden_size)
    if recipe.gate_mode in ("random", "uniform_random"):
        generator = torch.Generator().manual_seed(seed or 0)
        if recipe.gate_mode == "random":
            return torch.randn(shape, generator=generator)
        scale = math.sqrt(1.0 / base.hidden_size)
        return torch.rand(shape, generator=generator) * 2 * scale - scale
    tokenizer = _prompt_tokenizer(base)
    if recipe.gate_mode == "cheap_embed":
        embed = reader.read(reader.locate(recipe.base_model, "model.embed_tokens.weight")).float()

        def states(prompts: Sequence[str]) -> torch.Tensor:
            return _cheap_embedding(embed, _tokenize(tokenizer, prompts), base.num_layers)
    else:
        model = _load_base_model(base)

        def states(prompts: Sequence[str]) -> torch.Tensor:
            _stop_if_cancelled(cancel)  # between forward passes, which may take long on a large base
            return _last_token_states(model, _tokenize(tokenizer, prompts))

    vectors = []
    for expert in recipe.experts:
        vector = states(expert.positive_prompts)
        if expert.negative_prompts:
            vector = vector - states(expert.negative_prompts)
        vectors.append(vector / vector.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8))
    return torch.stack(vectors).permute(1, 0, 2)


def _stop_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise MergeCancelled("merge cancelled")


def _prompt_tokenizer(base: DonorInfo) -> Any:
    """The base's tokenizer, padding on the left with the BOS token (EOS when there is none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base.path)
    except (OSError, ValueError) as exc:
        raise DonorError(f"cannot load the tokenizer of {base.display_name}: {exc}") from None
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tokenize(tokenizer: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each prompt after the BOS text, padded into one batch (no other special tokens)."""
    bos = tokenizer.bos_token or ""
    batch = tokenizer([bos + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    return dict(batch)


def _cheap_embedding(embed: torch.Tensor, batch: Mapping[str, torch.Tensor], num_layers: int) -> torch.Tensor:
    """The unit-length sum of the prompts' token embeddings (padding masked out), for every layer."""
    rows = embed[batch["input_ids"]]  # (prompts, tokens, hidden): one-hot times embed, exactly
    summed = (rows * batch["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
    unit = summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return unit.repeat(num_layers, 1)


def _load_base_model(base: DonorInfo) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if base.path is None:
        raise DonorError(f"donor {base.display_name} has no local weights (download it first)")
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16, low_cpu_mem_usage=True)
    except (OSError, ValueError) as exc:
        raise DonorError(f"cannot load {base.display_name} with transformers: {exc}") from None
    return model.eval()


def _last_token_states(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The last token's hidden state entering each layer, averaged over the prompts: (layers, hidden)."""
    import torch

    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, return_dict=True)
    states = torch.stack(output.hidden_states[:-1])[:, :, -1, :]  # (layers, prompts, hidden)
    return states.sum(dim=1) / states.shape[1]
