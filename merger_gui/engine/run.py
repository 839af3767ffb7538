"""The merge run loop: a plain generator from a recipe and its donors to a model folder.

:func:`run_merge` validates, plans, checks donors and disk space before writing
anything, then merges stage by stage and tensor by tensor, yielding progress events.
torch is imported only when a tensor needs math (a method other than passthrough, a
dtype change, a scale, a vocabulary rebuild, a ``.bin`` donor): a plain passthrough
copies bytes file to file without it. A merged tensor is written on a background thread
while the next one is merged (:class:`~.write_behind.WriteBehind`), torch computing on one
core fewer. Every output (the final one and each intermediate stage's) is written into a hidden
temporary sibling folder and renamed into place only when complete. Cancelling (the
``cancel`` event, checked between tensors) removes the partial folder and raises
:class:`MergeCancelled`; so does any error, as a one-line :class:`UserError` naming the file
read or written. Partial folders left beside the outputs by a merge whose process is gone
(killed) are removed before the free space is measured.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.dtypes import dtype_code
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.output_folders import FINGERPRINT_FILE, overlaps, replace_refusal, stage_folder_name
from merger_gui.core.plan import Plan, PlannedTensor, StagePlan, plan_recipe, stage_slices
from merger_gui.core.readiness import merge_readiness
from merger_gui.core.recipe import Recipe, Stage
from merger_gui.core.units import format_size
from merger_gui.core.validation import validate_recipe

from .chat_template import check_chat_template, resolve_chat_template, write_chat_template
from .events import (
    DownloadProgress, MergeCancelled, MergeDone, MergeEvent, MergeWarning, StageFinished, StageStarted,
    TensorProgress,
)
from .draw_order import RANDOMIZED_METHODS, random_draw_order
from .fingerprint import folder_fingerprint, stage_fingerprint, store_fingerprint, stored_fingerprint
from .output import (
    check_folder_path, commit_folder, copy_files, held_signals, partial_folder, release_partial, remove_folder,
    sweep_stale_partials, write_metadata,
)
from .reader import ByteRange, SourceTensor, TensorReader
from .write_behind import WriteBehind
from .writer import DEFAULT_SHARD_SIZE, ShardedWriter, planned_bytes

if TYPE_CHECKING:  # torch, the tensor math and the Hub client are imported only when needed
    import torch

    from .vocabulary import VocabularyPlan

__all__ = [
    "DownloadProgress", "MergeCancelled", "MergeDone", "MergeEvent", "MergeOptions", "MergeWarning",
    "StageFinished", "StageStarted", "TensorProgress", "run_merge",
]

DISK_MARGIN = 16 * 1024 * 1024  # config, tokenizer and recipe files beside the weights


@dataclass(frozen=True)
class MergeOptions:
    """How to run a merge.

    Attributes:
        device: ``cpu`` or ``cuda`` (where the tensor math runs).
        shard_size: Maximum bytes of tensor data per weight file.
        intermediate_dir: Where non-final stages are written (default ``<out_dir>.intermediate``).
        overwrite: Replace an existing output folder (only once the new one is complete).
        copy_tokenizer: Copy the config donor's tokenizer files to the output.
        seed: Seed of random methods (dare): one generator per stage, drawn in mergekit's order, so
            mergekit run with ``--random-seed`` and the same seed gives the same tensors.
        recipe_path: The recipe file being merged: no folder holding it is ever replaced.
    """

    device: str = "cpu"
    shard_size: int = DEFAULT_SHARD_SIZE
    intermediate_dir: str | Path | None = None
    overwrite: bool = False
    copy_tokenizer: bool = True
    seed: int | None = 0
    recipe_path: str | Path | None = None


@dataclass
class _Job:
    """One stage to run: where it goes and whether an earlier run can be reused."""

    plan: StagePlan
    stage: Stage
    target: Path
    final: bool
    fingerprint: str | None
    reused: bool
    order: tuple[int, ...]  # plan indices of the tensors in merge (and write) order

    @cached_property
    def layouts(self) -> tuple[TensorInfo, ...]:
        tensors = self.plan.tensors
        return tuple(tensors[i].info for i in self.order)


@dataclass
class _Progress:
    started: float
    total_tensors: int
    total_bytes: int
    tensors: int = 0
    bytes: int = 0


def run_merge(recipe: Recipe, donors: Mapping[str, DonorInfo], out_dir: str | Path,
              options: MergeOptions = MergeOptions(),
              cancel: threading.Event | None = None) -> Generator[MergeEvent, None, None]:
    """Merge ``recipe`` into ``out_dir``, yielding progress events; the last one is :class:`MergeDone`.

    Nothing is read or written before the recipe validates, every donor tensor is found
    with the planned shape and the disk has room. Closing the generator early cleans up
    like a cancel.

    Args:
        recipe: The recipe; multi-stage recipes run their stages in dependency order.
        donors: Donor facts by the recipe's model name (stages' outputs excluded).
        out_dir: The folder to create.
        options: Device, shard size, intermediate folder, overwrite, tokenizer copy, seed.
        cancel: Set it to stop between tensors.

    Raises:
        MergeCancelled: ``cancel`` was set; the partial output was removed.
        UserError: invalid recipe, unusable donor, existing output, no disk space, disk full…
    """
    started = time.monotonic()
    findings = validate_recipe(recipe, donors)
    blockers = merge_readiness(recipe, donors, findings=findings)
    if blockers:
        more = f" (and {len(blockers) - 1} more)" if len(blockers) > 1 else ""
        raise UserError(f"the recipe is not valid: {blockers[0]}{more}")
    device = _device(options.device)
    if options.shard_size <= 0:
        raise UserError("the shard size must be positive")
    target = Path(out_dir).absolute()
    _check_output_folders(target, options, donors)
    for stage in recipe.stages:
        check_chat_template(stage.chat_template)
    for finding in findings:
        yield MergeWarning(f"{finding.location}: {finding.message}")

    donors = dict(donors)
    plan = plan_recipe(recipe, donors)
    if any(d.kind == "hub" or d.adapter for d in donors.values()):
        plan = yield from _fetch_hub_files(recipe, plan, donors, options, cancel)
    for sp in plan.stages:
        for tensor in sp.tensors:
            if tensor.note:
                yield MergeWarning(f"{sp.label}: {tensor.name}: {tensor.note}")

    jobs = _jobs(recipe, plan, donors, target, options)
    _check_stage_folders(jobs, donors, options)
    reader = TensorReader(donors)
    try:
        stage_names = {j.stage.name for j in jobs if j.stage.name}
        located = {j.plan.index: _locate(reader, j, stage_names) for j in jobs if not j.reused}
        for folder in sweep_stale_partials(j.target.parent for j in jobs):  # before measuring the free space
            yield MergeWarning(f"removed {folder}, left by a merge whose process is gone")
        _check_space([(j.target.parent, planned_bytes(j.layouts, options.shard_size) + DISK_MARGIN)
                      for j in jobs if not j.reused])
        progress = _Progress(started, sum(len(j.layouts) for j in jobs if not j.reused),
                             sum(sum(t.nbytes for t in j.layouts) for j in jobs if not j.reused))
        for k, job in enumerate(jobs):
            stage_start = time.monotonic()
            yield StageStarted(k, len(jobs), job.plan.label, len(job.layouts), job.reused)
            if not job.reused:
                sources = located[job.plan.index]
                if sources is None:  # reads an intermediate stage built just now
                    sources = _locate(reader, job, set())
                    assert sources is not None  # nothing is pending any more
                yield from _run_stage(job, sources, reader, donors, device, options, cancel, progress)
            if job.stage.name:  # later stages read this output
                donors[job.stage.name] = inspect_folder(job.target)
                reader.add_donor(job.stage.name, donors[job.stage.name])
            yield StageFinished(k, len(jobs), job.plan.label, job.target, job.reused,
                                time.monotonic() - stage_start)
    finally:
        reader.close()
    yield MergeDone(target, progress.tensors, progress.bytes, time.monotonic() - started)


def _fetch_hub_files(recipe: Recipe, plan: Plan, donors: dict[str, DonorInfo], options: MergeOptions,
                     cancel: threading.Event | None) -> Generator[DownloadProgress, None, Plan]:
    """Download the files of Hub donors the plan reads and the Hub adapters (repo ids, not folders)
    of MODEL+LORA donors into the cache, once the disk has room for all of them (updating
    ``donors``); returns the plan, made again when tokenizers arrived that can change the vocabulary."""
    from .fetch import adapter_fetch_bytes, fetch_adapter, fetch_donor, plan_fetches

    fetches = plan_fetches(recipe, plan, donors, options.copy_tokenizer)
    adapters = {m: adapter_fetch_bytes(d) for m, d in sorted(donors.items())
                if d.adapter and not Path(d.adapter).is_dir()}
    if not fetches and not adapters:
        return plan
    from huggingface_hub import constants

    _check_space([(Path(constants.HF_HUB_CACHE), sum(f.nbytes for f in fetches) + sum(adapters.values()))],
                 "to download donors into")
    for fetch in fetches:
        donors[fetch.model] = yield from fetch_donor(fetch, donors[fetch.model], cancel)
    for model in adapters:
        donors[model] = yield from fetch_adapter(model, donors[model], cancel)
    return plan_recipe(recipe, donors) if fetches else plan


def _device(name: str) -> str:
    if name == "cpu":
        return name
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("device cuda was asked for, but no CUDA GPU is available to torch; use --device cpu")
        return name
    raise UserError(f"unknown device {name!r}: use cpu or cuda")


def _check_output_folders(target: Path, options: MergeOptions, donors: Mapping[str, DonorInfo]) -> None:
    """Refuse an output that overlaps a donor's folder, an intermediate folder that overlaps the
    output, and an existing output that ``--overwrite`` may not replace (see core.output_folders)."""
    out = target.resolve()
    for model, folder in _donor_folders(donors):
        if out == folder or out.is_relative_to(folder):
            raise UserError(f"the output folder {target} is {'' if out == folder else 'inside '}the folder of "
                            f"donor {model}; choose a folder outside every donor's")
        if folder.is_relative_to(out):
            raise UserError(f"the output folder {target} contains donor {model} ({folder}); "
                            "choose a folder outside every donor's")
    if options.intermediate_dir is not None:
        inter = Path(options.intermediate_dir).absolute().resolve()
        if overlaps(inter, out):
            raise UserError(f"the intermediate folder {options.intermediate_dir} overlaps the output folder "
                            f"{target}; choose separate folders")
    check_folder_path(target.parent, target)
    if target.exists() or target.is_symlink():
        if not options.overwrite:
            raise UserError(f"{target} already exists; choose another folder or replace it (--overwrite)")
        refusal = replace_refusal(target, options.recipe_path, _donor_folders(donors))
        if refusal:
            raise UserError(refusal)


def _check_stage_folders(jobs: Sequence[_Job], donors: Mapping[str, DonorInfo], options: MergeOptions) -> None:
    """Refuse intermediate stage folders that would overlap a donor or replace what is not ours.

    An existing stage folder is replaced only when an earlier run of this tool completed it
    (its fingerprint file) or with ``--overwrite``, and in both cases only when it holds
    nothing but a merge's files.
    """
    donor_folders = _donor_folders(donors)
    for job in jobs:
        if job.final:
            continue
        check_folder_path(job.target.parent, job.target)
        folder = job.target.absolute().resolve()
        for model, donor in donor_folders:
            if overlaps(folder, donor):
                raise UserError(f"the folder of stage {job.plan.label}, {job.target}, overlaps the folder of "
                                f"donor {model}; choose another --intermediate-dir")
        if job.reused or not (job.target.exists() or job.target.is_symlink()):
            continue
        ours = (job.target / FINGERPRINT_FILE).is_file()
        if not ours and not options.overwrite:
            raise UserError(f"{job.target} already exists and was not written by merger_gui; choose another "
                            "--intermediate-dir or replace it (--overwrite)")
        refusal = replace_refusal(job.target, options.recipe_path, donor_folders)
        if refusal:
            raise UserError(refusal)


def _donor_folders(donors: Mapping[str, DonorInfo]) -> list[tuple[str, Path]]:
    """(model, resolved folder) of every donor with local files."""
    return [(model, Path(d.path).absolute().resolve()) for model, d in sorted(donors.items()) if d.path is not None]


def _jobs(recipe: Recipe, plan: Plan, donors: Mapping[str, DonorInfo], target: Path,
          options: MergeOptions) -> list[_Job]:
    inter = Path(options.intermediate_dir).absolute() if options.intermediate_dir \
        else target.parent / f"{target.name}.intermediate"
    fingerprints: dict[str, str] = {}
    jobs = []
    for k, sp in enumerate(plan.stages):
        stage = recipe.stages[sp.index]
        final = k == len(plan.stages) - 1
        order = _merge_order(stage, sp)
        if final:
            jobs.append(_Job(sp, stage, target, True, None, False, order))
            continue
        inputs = {m: fingerprints[m] if m in fingerprints else _donor_fingerprint(donors[m])
                  for m in stage.referenced_models}
        fingerprint = stage_fingerprint(stage, inputs, options.seed)
        if stage.name:
            fingerprints[stage.name] = fingerprint
        folder = inter / stage_folder_name(sp.label)
        reused = folder.is_dir() and stored_fingerprint(folder) == fingerprint
        jobs.append(_Job(sp, stage, folder, False, fingerprint, reused, order))
    return jobs


def _donor_fingerprint(donor: DonorInfo) -> str:
    """What identifies a donor's weights: its folder's files, else its reference (and its LoRA adapter's)."""
    weights = folder_fingerprint(donor.path) if donor.path else f"{donor.kind}:{donor.ref}"
    if donor.adapter and Path(donor.adapter).is_dir():
        return f"{weights}+{folder_fingerprint(donor.adapter)}"
    return f"{weights}+{donor.adapter}" if donor.adapter else weights


def _merge_order(stage: Stage, plan: StagePlan) -> tuple[int, ...]:
    """Plan order, except for randomized methods: mergekit's order, so the same seed draws the same masks."""
    if stage.merge_method not in RANDOMIZED_METHODS:
        return tuple(range(len(plan.tensors)))
    return tuple(random_draw_order([[s.tensor for s in t.sources] for t in plan.tensors]))


def _locate(reader: TensorReader, job: _Job, pending: set[str]) -> list[tuple[SourceTensor, ...]] | None:
    """Every source of every tensor, found and shape-checked; None when it reads a stage in ``pending``."""
    if any(m in pending for m in job.stage.referenced_models):
        return None
    vocab_rows_may_differ = job.stage.effective_tokenizer_source is not None
    located = []
    for tensor in job.plan.tensors:
        sources = tuple(reader.locate(s.model, s.tensor) for s in tensor.sources)
        if not sources:
            raise DonorError(f"no donor holds tensor {tensor.name!r}")
        for source in sources:
            expected = tensor.shape
            if vocab_rows_may_differ and tensor.is_vocab:
                expected = source.info.shape[:1] + tensor.shape[1:]
            if source.info.shape != expected:
                raise DonorError(f"shape mismatch: tensor {source.label} is {list(source.info.shape)}, "
                                 f"the merge needs {list(expected)} for {tensor.name!r}")
        located.append(sources)
    return located


def _check_space(needs: Sequence[tuple[Path, int]], purpose: str = "for the output in") -> None:
    """Refuse early when a filesystem lacks room for the bytes headed to it."""
    by_device: dict[int, list[Any]] = {}
    for folder, nbytes in needs:
        existing = _existing_ancestor(folder)
        entry = by_device.setdefault(os.stat(existing).st_dev, [0, existing])
        entry[0] += nbytes
    for needed, folder in by_device.values():
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise UserError(f"not enough disk space {purpose} {folder}: {format_size(needed)} needed, "
                            f"{format_size(free)} free")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _run_stage(job: _Job, located: list[tuple[SourceTensor, ...]], reader: TensorReader,
               donors: Mapping[str, DonorInfo], device: str, options: MergeOptions,
               cancel: threading.Event | None, progress: _Progress) -> Iterator[MergeEvent]:
    stage = job.stage
    stage_donors = {m: donors[m] for m in stage.referenced_models if m in donors}
    vocabulary: VocabularyPlan | None = None
    if stage.effective_tokenizer_source is not None:
        from .vocabulary import build_vocabulary

        vocabulary = build_vocabulary(stage, stage_donors)
    slices = [s for s in stage_slices(stage, stage_donors) if s.sources]
    generator = None
    if stage.merge_method in RANDOMIZED_METHODS and options.seed is not None:
        # One generator per stage, as mergekit seeds once per run and draws in merge order.
        import torch

        generator = torch.Generator(device=device)
        generator.manual_seed(options.seed)
    tensors = [(job.plan.tensors[index], located[index]) for index in job.order]
    copies = [_byte_copy(tensor, sources, stage, reader, vocabulary) for tensor, sources in tensors]
    merges = [_merge_bytes(tensor, sources) for (tensor, sources), copy in zip(tensors, copies) if copy is None]
    partial: Path | None = None
    writer: ShardedWriter | None = None
    weights_done = False
    broken: list[str] = []  # merged tensors holding inf or NaN
    try:
        with held_signals():  # so that a signal cannot fall between the folder's creation and this name
            partial = partial_folder(job.target)
        writer = ShardedWriter(partial, job.layouts, options.shard_size)
        with WriteBehind(writer, max(merges, default=0)) as output, _one_core_for_writing(bool(merges)):
            for i, ((tensor, sources), copy) in enumerate(zip(tensors, copies)):
                if cancel is not None and cancel.is_set():
                    raise MergeCancelled("cancelled: nothing was written")
                base = (slices[tensor.slice_index].base_model if tensor.slice_index < len(slices) else None) \
                    or stage.base_model
                if not _produce(tensor, sources, copy, stage, base, reader, output, vocabulary, device, generator):
                    broken.append(tensor.name)
                progress.tensors += 1
                progress.bytes += job.layouts[i].nbytes
                elapsed = time.monotonic() - progress.started
                eta = elapsed / progress.bytes * (progress.total_bytes - progress.bytes) if progress.bytes else None
                yield TensorProgress(tensor.name, i + 1, len(job.layouts), progress.tensors,
                                     progress.total_tensors, progress.bytes, progress.total_bytes, eta)
        writer.close()
        weights_done = True
        if broken:
            yield MergeWarning(_non_finite_warning(job.plan.label, broken))
        config_donor = donors[job.plan.config_donor]
        write_metadata(partial, job.plan, stage, config_donor, options.copy_tokenizer and vocabulary is None)
        if vocabulary is not None:
            vocabulary.save(partial)
            if options.copy_tokenizer and config_donor.path:
                copy_files(Path(config_donor.path), partial, ("generation_config.json",))
        if stage.chat_template:
            warning = _apply_chat_template(stage, partial, donors)
            if warning:
                yield MergeWarning(f"{job.plan.label}: {warning}")
        with held_signals():  # committed whole or discarded whole
            release_partial(partial)  # before the fingerprint, which lists the folder's files
            if job.fingerprint is not None:
                store_fingerprint(partial, job.fingerprint)
            commit_folder(partial, job.target, overwrite=options.overwrite or not job.final)
    except OSError as exc:
        shard = writer.current_file if writer is not None and not weights_done else None
        _discard(writer, partial)
        raise _os_error(exc, job, partial, shard, options) from None
    except BaseException as exc:
        if not _discard(writer, partial):
            raise UserError(f"{str(exc) or 'stopped'}; the partial folder {partial} could not be removed "
                            "(the next merge beside it removes it)") from exc
        raise


def _discard(writer: ShardedWriter | None, partial: Path | None) -> bool:
    """Close the open weight file and remove the partial folder, signals held; whether it is gone."""
    with held_signals():
        if writer is not None:
            writer.abort()
        return partial is None or remove_folder(partial)


def _os_error(exc: OSError, job: _Job, partial: Path | None, shard: Path | None, options: MergeOptions) -> UserError:
    """One line naming the file that failed: the one written (as named in the output) or read."""
    written = _in_output(exc.filename2, partial, job.target) or _in_output(exc.filename, partial, job.target)
    if written is None and exc.filename is not None and exc.errno != errno.ENOSPC:
        return UserError(f"cannot read {exc.filename}: {exc.strerror or exc}")
    file = written or _in_output(shard, partial, job.target) or job.target
    if exc.errno == errno.ENOSPC:
        needed = planned_bytes(job.layouts, options.shard_size)
        free = shutil.disk_usage(_existing_ancestor(job.target.parent)).free
        return UserError(f"disk full while writing {file}: {format_size(needed)} needed, {format_size(free)} free")
    return UserError(f"cannot write {file}: {exc.strerror or exc}")


def _in_output(name: str | bytes | os.PathLike[str] | None, partial: Path | None, target: Path) -> Path | None:
    """``name`` as it is called in ``target`` when it lies in the partial folder (or is the target)."""
    if name is None or partial is None or isinstance(name, bytes):
        return None
    path = Path(name)
    if path == target:
        return target
    return target / path.relative_to(partial) if path.is_relative_to(partial) else None


def _apply_chat_template(stage: Stage, folder: Path, donors: Mapping[str, DonorInfo]) -> str | None:
    """Write the stage's chat template into the output's tokenizer; a warning when it cannot."""
    models = ([stage.base_model] if stage.base_model else []) + list(stage.referenced_models)
    folders = [Path(p) for m in dict.fromkeys(models) if m in donors and (p := donors[m].path)]
    template = resolve_chat_template(stage.chat_template, folders)
    if template is None:
        return "chat_template: auto: no donor has a chat template; the output has none"
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return "chat_template was not saved: the output has no tokenizer"
    write_chat_template(folder, template)
    return None


@contextmanager
def _one_core_for_writing(math: bool) -> Iterator[None]:
    """Run torch's kernels on one core fewer than torch's default, left to the writer thread.

    When every core is busy, torch's OpenMP threads wait at the end of each kernel for one
    the system has not scheduled: on two cores shared with other work, a SLERP of two 0.7 GB
    donors took 15-40 s with two threads and 3-4 s with one.
    """
    if not math:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _passes_through(tensor: PlannedTensor, sources: Sequence[SourceTensor], stage: Stage,
                    vocabulary: VocabularyPlan | None) -> bool:
    """Whether ``tensor`` is its one source's values, in the output dtype."""
    aligned = vocabulary is not None and tensor.is_vocab
    return stage.merge_method == "passthrough" and len(sources) == 1 \
        and "scale" not in tensor.sources[0].parameters and not aligned


def _byte_copy(tensor: PlannedTensor, sources: Sequence[SourceTensor], stage: Stage, reader: TensorReader,
               vocabulary: VocabularyPlan | None) -> ByteRange | None:
    """The donor bytes to copy file to file as ``tensor``, bit-identical; None when it needs torch."""
    if _passes_through(tensor, sources, stage, vocabulary) and sources[0].info.dtype == tensor.dtype \
            and _working_code(stage, sources) == tensor.dtype:
        return reader.byte_range(sources[0])
    return None


def _merge_bytes(tensor: PlannedTensor, sources: Sequence[SourceTensor]) -> int:
    """The bytes of one merge's inputs and output."""
    return sum(s.info.nbytes for s in sources) + tensor.info.nbytes


def _produce(tensor: PlannedTensor, sources: Sequence[SourceTensor], copy: ByteRange | None, stage: Stage,
             base: str | None, reader: TensorReader, output: WriteBehind, vocabulary: VocabularyPlan | None,
             device: str, generator: torch.Generator | None) -> bool:
    """Merge (or copy) one output tensor and append it to the output; False when the merge gave
    inf or NaN (a copied or passed-through tensor is the donor's and is not checked).

    The stage holds at most the bytes of its largest merge (:func:`_merge_bytes`) at once: the
    previous result is still being written only while this merge fits beside it.
    """
    if copy is not None:  # bit-identical, file to file, without touching memory
        try:
            output.copy(tensor.name, copy.handle, copy.offset)
        except EOFError:
            raise DonorError(f"{sources[0].label}: {sources[0].file} ends early (truncated file)") from None
        return True
    import torch

    from .methods import merge_tensors
    from .reader import torch_dtype

    output.make_room(_merge_bytes(tensor, sources))
    working = torch_dtype(_working_code(stage, sources))
    inputs = [reader.read(s).to(dtype=working) for s in sources]
    if vocabulary is not None and tensor.is_vocab:
        inputs = vocabulary.align_all([s.model for s in sources], inputs)
    inputs = [t.to(device=device) for t in inputs]
    merged = not _passes_through(tensor, sources, stage, vocabulary)
    if not merged:
        result = inputs[0]
    else:
        result = merge_tensors(
            stage.merge_method, inputs, [s.model for s in tensor.sources], base, tensor.parameters,
            [s.parameters for s in tensor.sources], tensor_name=tensor.name, generator=generator,
        )
    out = result.to(dtype=torch_dtype(tensor.dtype)).cpu().contiguous()
    if tuple(out.shape) != tensor.shape:
        raise DonorError(f"tensor {tensor.name!r}: the merge gave shape {list(out.shape)}, "
                         f"the plan expects {list(tensor.shape)}")
    output.write(tensor.name, out.reshape(-1).view(torch.uint8).numpy().data)
    return not merged or bool(torch.isfinite(out).all())


def _non_finite_warning(label: str, names: Sequence[str]) -> str:
    """What a user is told when merged tensors overflowed their type or became NaN."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{label}: {len(names)} merged tensor{'s' * (len(names) != 1)} hold inf or NaN ({shown}): the "
            "weights or parameters push values beyond the output dtype; the model will not work as merged")


def _working_code(stage: Stage, sources: Sequence[SourceTensor]) -> str:
    """dtype code of the recipe's ``dtype``, else of the common dtype of the inputs."""
    if stage.dtype:
        return dtype_code(stage.dtype)
    codes = {s.info.dtype for s in sources}
    if len(codes) == 1:
        return codes.pop()
    import torch

    from .reader import torch_dtype

    working = torch_dtype(sources[0].info.dtype)
    for source in sources[1:]:
        working = torch.promote_types(working, torch_dtype(source.info.dtype))
    return dtype_code(str(working))
