"""Build a frankenMoE from dense donors as mergekit-moe 0.1.5 does, streamed tensor by tensor.

Attention, norms and embeddings come from the base, every layer's MLP from each expert (Mixtral:
fused ``experts.gate_up_proj`` / ``experts.down_proj``, the transformers 5 layout mergekit 0.1.5
writes; Qwen MoE: ``experts.N.*`` and the shared expert's ``shared_expert.*``; see
:mod:`merger_gui.core.moe_output`) and the router rows (and the shared expert's gate) from the
experts' prompts:

- ``cheap_embed``: the normalised sum of the base's token embeddings over the prompts'
  tokens (positive minus negative), the same for every layer;
- ``hidden`` (or ``hidden_last``): the base model's hidden state of the last token before each
  layer (transformers, bf16, CPU), averaged over the prompts, positive minus negative, normalised;
  ``hidden_avg`` averages over the prompt's positions instead;
- ``random`` / ``uniform_random``: drawn from a generator seeded with the merge's seed.
  mergekit-moe draws them unseeded, so no run of either tool repeats another.

An expert's ``noise_scale`` adds Gaussian noise of that standard deviation to its MLP weights in
their stored dtype, before ``residual_scale``, as mergekit-moe does (seeded here, unseeded there).

The output is written into a hidden sibling folder and renamed into place when complete, like
:func:`~.run.run_merge`; cancelling or an error removes it.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.errors import DonorError, RecipeError, UserError
from merger_gui.core.moe_output import moe_output_config, moe_output_dtype, moe_output_tensors
from merger_gui.core.moe_recipe import MoeExpert, MoeRecipe, dump_moe, moe_problems
from merger_gui.core.output_folders import replace_refusal

from .events import GateProgress, MergeCancelled, MergeDone, MergeEvent, StageFinished, StageStarted, TensorProgress
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
# Qwen MoE: one expert's (N) or the shared expert's MLP tensor P of layer L.
EXPERT_TENSOR = re.compile(r"model\.layers\.(\d+)\.mlp\.(?:experts\.(\d+)|shared_expert)\.(\w+)\.weight")


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
        gates = yield from gate_vectors(recipe, base, reader, options.seed, cancel)
        folder = partial_folder(out)
        written = yield from _write_folder(folder, recipe, base, layout, reader, gates, options, cancel)
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
                  reader: TensorReader, gates: torch.Tensor, options: MergeOptions,
                  cancel: threading.Event | None) -> Generator[MergeEvent, None, int]:
    """Write config, tokenizer, recipe and weights into ``folder``; returns the weight bytes.
    Any error, a cancel or closing the generator removes ``folder``."""
    import json

    import torch

    noise = torch.Generator().manual_seed(options.seed or 0)
    sources = _Sources(recipe, base, reader, gates, _torch_dtype(recipe, base), noise)
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
            tensor = sources.tensor(info)
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


@dataclass(frozen=True)
class _Sources:
    """Where each output tensor comes from: the donors, the gate vectors, the noise generator."""

    recipe: MoeRecipe
    base: DonorInfo
    reader: TensorReader
    gates: torch.Tensor  # (layers, experts + shared experts, hidden)
    dtype: torch.dtype
    noise: torch.Generator

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """Output tensor ``info``: a router or shared gate, an expert's MLP, or the base's own, in the output dtype."""
        import torch

        name, parts = info.name, info.name.split(".")
        experts = len(self.recipe.experts)
        if name.endswith(".mlp.gate.weight"):
            return self.gates[int(parts[2]), :experts].to(self.dtype)
        if name.endswith(".mlp.shared_expert_gate.weight"):
            return self.gates[int(parts[2]), experts:].to(self.dtype)
        if ".mlp.experts." in name and parts[-1] in dict(EXPERT_PARTS):  # Mixtral: every expert, fused
            sources = dict(EXPERT_PARTS)[parts[-1]]
            return torch.stack([torch.cat([self._expert_part(e, int(parts[2]), p) for p in sources])
                                for e in self.recipe.experts]).to(self.dtype)
        match = EXPERT_TENSOR.fullmatch(name)
        if match:
            layer, index, part = match.groups()
            expert = self.recipe.shared_experts[0] if index is None else self.recipe.experts[int(index)]
            return self._expert_part(expert, int(layer), part).to(self.dtype)
        if name not in self.base.tensor_map:  # Qwen MoE from a Llama base: no attention biases
            return torch.zeros(info.shape, dtype=self.dtype)
        return self.reader.read(self.reader.locate(self.recipe.base_model, name)).to(self.dtype)

    def _expert_part(self, expert: MoeExpert, layer: int, part: str) -> torch.Tensor:
        """The expert's MLP tensor, with its noise and residual scale in the stored dtype (as mergekit)."""
        import torch

        tensor = self.reader.read(self.reader.locate(expert.source_model, f"model.layers.{layer}.mlp.{part}.weight"))
        if expert.noise_scale is not None:
            tensor = tensor + torch.randn(tensor.shape, generator=self.noise, dtype=tensor.dtype) * expert.noise_scale
        if part == "down_proj" and expert.residual_scale is not None:
            tensor = tensor * expert.residual_scale
        return tensor


def gate_vectors(recipe: MoeRecipe, base: DonorInfo, reader: TensorReader, seed: int | None = 0,
                 cancel: threading.Event | None = None) -> Generator[GateProgress, None, torch.Tensor]:
    """Router weights of every layer, (layers, experts + shared experts, hidden), before the cast to
    the output dtype: the routed experts' rows, then the shared expert's gate (Qwen MoE). Yields a
    :class:`GateProgress` once the prompts can be read and after each prompt batch (none for the
    random modes); returns the weights.

    Raises:
        MergeCancelled: ``cancel`` was set before the model load or a prompt batch.
    """
    import torch

    _stop_if_cancelled(cancel)
    # Qwen MoE gates its one shared expert
    gated = [(f"expert {i + 1}", e) for i, e in enumerate(recipe.experts)] + \
        [(f"shared expert {i + 1}", e) for i, e in enumerate(recipe.shared_experts)]
    shape = (base.num_layers, len(gated), base.hidden_size)
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
            return _hidden_states(model, _tokenize(tokenizer, prompts), recipe.gate_mode == "hidden_avg")

    total = sum(1 + bool(expert.negative_prompts) for _, expert in gated)
    done = 0
    yield GateProgress(done, total, gated[0][0], gated[0][1].source_model)
    vectors = []
    for label, expert in gated:
        read = []  # the positive prompts' states, then the negative ones'
        for prompts in (expert.positive_prompts, expert.negative_prompts)[:1 + bool(expert.negative_prompts)]:
            _stop_if_cancelled(cancel)  # between forward passes, which may take long on a large base
            read.append(states(prompts))
            done += 1
            yield GateProgress(done, total, label, expert.source_model)
        vector = read[0] - read[1] if len(read) > 1 else read[0]
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


def _hidden_states(model: Any, batch: Mapping[str, torch.Tensor], average: bool) -> torch.Tensor:
    """The hidden state entering each layer, of the last token (or, ``average``, the mean over every
    position, padding included, as mergekit-moe takes it), averaged over the prompts: (layers, hidden)."""
    import torch

    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, return_dict=True)
    states = torch.stack(output.hidden_states[:-1])  # (layers, prompts, tokens, hidden)
    states = states.sum(dim=2) / states.shape[2] if average else states[:, :, -1, :]
    return states.sum(dim=1) / states.shape[1]
