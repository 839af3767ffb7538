"""Sweep one parameter: merge a variant per value, evaluate it, keep or delete it, resume after a stop.

A parameter is named as the YAML names it at the final stage's top level: ``t`` is the whole
parameter (every rule replaced by the value), ``t.self_attn`` the value of its rule whose filter
is ``self_attn``. Each variant is the recipe edited with the core's pure parameter edits,
merged by :func:`~merger_gui.engine.run.run_merge` into ``OUT_DIR/<path>-<value>``, scored by
:func:`~merger_gui.engine.evaluate.score_folder`, and removed unless kept: the sweep needs the
disk of one variant plus the kept ones. The final stage's donors are scored once, first.

``OUT_DIR/sweep.json`` records the donors' figures and each finished variant's, written after
every variant: a cancelled or killed sweep, run again with the same recipe, parameter and text,
skips what is done. Cancelling removes the unfinished variant's folder and raises
:class:`SweepCancelled`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError
from merger_gui.core.methods import method_spec
from merger_gui.core.output_folders import overlaps
from merger_gui.core.parameter_edits import TOP_LEVEL, get_parameter, get_rules, set_parameter, set_rule_value
from merger_gui.core.plan import plan_recipe
from merger_gui.core.readiness import merge_readiness
from merger_gui.core.recipe import Recipe, Stage
from merger_gui.core.recipe_yaml import dump_recipe

from .evaluate import (
    EvaluationCancelled, EvaluationOptions, EvaluationProgress, TextScore, agreement_of, sample_text, score_folder,
)
from .events import MergeCancelled, MergeEvent
from .output import check_folder_path, remove_folder
from .run import MergeOptions, run_merge

__all__ = [
    "ParamPath", "SweepCancelled", "SweepDone", "SweepEvent", "SweepOptions", "SweepResult", "VariantDone",
    "VariantResult", "VariantStarted", "parse_param_path", "parse_values", "run_sweep", "stepped_values",
    "sweep_paths", "variant_recipe",
]

STATE_FILE = "sweep.json"
STATE_VERSION = 1
STAGES_FOLDER = "stages"  # intermediate stages of multi-stage recipes, shared by the variants


class SweepCancelled(UserError):
    """The sweep stopped; finished variants are recorded and a new run resumes after them."""


@dataclass(frozen=True)
class ParamPath:
    """A parameter of the final stage's top level: ``name``, or its rule with ``filter``."""

    name: str
    filter: str | None = None

    def __str__(self) -> str:
        return self.name if self.filter is None else f"{self.name}.{self.filter}"


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep: keep the variants or not, how to evaluate and merge each."""

    keep: bool = False
    evaluation: EvaluationOptions = EvaluationOptions()
    merge: MergeOptions = MergeOptions()


@dataclass(frozen=True)
class VariantResult:
    value: float
    perplexity: float
    agreement: dict[str, float | None] = field(default_factory=dict)  # by donor name
    folder: str | None = None  # kept variants only


@dataclass(frozen=True)
class SweepResult:
    """Every variant's figures in the order of the values; :meth:`to_json` is ``sweep --json``."""

    param: str
    donors: dict[str, float]  # perplexity by donor name
    variants: tuple[VariantResult, ...]

    def to_json(self) -> dict[str, Any]:
        return {"param": self.param,
                "donors": [{"donor": name, "perplexity": p} for name, p in self.donors.items()],
                "variants": [{"value": v.value, "perplexity": v.perplexity, "agreement": v.agreement,
                              "folder": v.folder} for v in self.variants]}


@dataclass(frozen=True)
class VariantStarted:
    index: int  # 0-based position among the values
    count: int
    value: float
    folder: Path


@dataclass(frozen=True)
class VariantDone:
    index: int
    count: int
    result: VariantResult
    resumed: bool  # recorded by an earlier run


@dataclass(frozen=True)
class SweepDone:
    result: SweepResult


SweepEvent = VariantStarted | VariantDone | SweepDone | EvaluationProgress | MergeEvent


def parse_param_path(text: str) -> ParamPath:
    """``t`` or ``t.self_attn`` (the filter is everything after the first dot)."""
    name, _, filter_ = text.strip().partition(".")
    if not name or (_ and not filter_):
        raise UserError(f"invalid parameter {text!r}: use a name such as t, or name.filter such as t.self_attn")
    return ParamPath(name, filter_ or None)


def parse_values(text: str) -> tuple[float, ...]:
    """``0.3,0.4,0.5`` as numbers, each finite and listed once."""
    values: list[float] = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UserError(f"invalid value {item.strip()!r} in {text!r}: use numbers such as 0.3,0.5,0.7") from None
        if not math.isfinite(value) or value in values:
            raise UserError(f"value {item.strip()!r} is {'listed twice' if value in values else 'not finite'}")
        values.append(value)
    return tuple(values)


def stepped_values(start: float, stop: float, steps: int) -> tuple[float, ...]:
    """``steps`` evenly spaced values from ``start`` to ``stop``, rounded to 6 decimals."""
    if steps < 1:
        raise UserError("a sweep needs at least one step")
    if steps == 1:
        return (round(start, 6),)
    return tuple(round(start + (stop - start) * k / (steps - 1), 6) for k in range(steps))


def sweep_paths(stage: Stage) -> list[str]:
    """The paths a sweep can take in ``stage``: each top-level parameter and its filtered rules,
    then the method's other numeric shared parameters."""
    paths = []
    for name in stage.parameters:
        paths.append(name)
        paths += [f"{name}.{rule.filter}" for rule in get_rules(stage, TOP_LEVEL, name) if rule.filter]
    spec = method_spec(stage.merge_method)
    for param in spec.shared_parameters if spec else ():
        if param.name not in paths and isinstance(param.default_value, (int, float)) \
                and not isinstance(param.default_value, bool):
            paths.append(param.name)
    return paths


def variant_recipe(recipe: Recipe, path: ParamPath, value: float) -> Recipe:
    """``recipe`` with its final stage's ``path`` set to ``value`` (a pure edit)."""
    if not recipe.stages:
        raise UserError("the recipe has no stage to sweep")
    stage = recipe.stages[-1]
    if path.filter is None:
        spec = method_spec(stage.merge_method)
        if get_parameter(stage, TOP_LEVEL, path.name) is None and (spec is None or spec.parameter(path.name) is None):
            raise UserError(f"{stage.merge_method} has no parameter {path.name!r}; "
                            f"sweepable: {', '.join(sweep_paths(stage)) or 'none'}")
        edited = set_parameter(stage, TOP_LEVEL, path.name, value)
    else:
        rules = get_rules(stage, TOP_LEVEL, path.name)
        index = next((i for i, r in enumerate(rules) if r.filter == path.filter), None)
        if index is None:
            raise UserError(f"parameter {path.name} has no rule with filter {path.filter!r} at the top of the "
                            f"final stage; sweepable: {', '.join(sweep_paths(stage)) or 'none'}")
        edited = set_rule_value(stage, TOP_LEVEL, path.name, index, value)
    return recipe.replace_stage(len(recipe.stages) - 1, edited)


def run_sweep(recipe: Recipe, donors: Mapping[str, DonorInfo], out_dir: str | Path, param: str,
              values: Sequence[float], options: SweepOptions = SweepOptions(),
              cancel: threading.Event | None = None) -> Generator[SweepEvent, None, None]:
    """Merge and evaluate one variant per value into ``out_dir``; the last event is :class:`SweepDone`.

    Args:
        recipe: The recipe; its final stage's ``param`` is swept.
        donors: Donor facts by model name; the final stage's local donors are evaluated too.
        out_dir: The sweep's folder (created): ``sweep.json`` and the kept variants.
        param: ``t`` or ``t.self_attn`` (see the module).
        values: The values, in order.
        options: Keep the variants, evaluation and merge options.
        cancel: Set it to stop; the unfinished variant is removed.

    Raises:
        SweepCancelled: stopped; run again to resume.
        UserError: an unknown parameter, a sweep that changes nothing, another sweep in ``out_dir``…
    """
    path = parse_param_path(param)
    if not values:
        raise UserError("a sweep needs at least one value")
    variants = [variant_recipe(recipe, path, v) for v in values]
    _check_variants(variants, values, donors, path)  # before any model is loaded: scoring is slow
    _check_changes(variants, donors, path)
    out = Path(out_dir).absolute()
    _check_out_dir(out, donors)
    text = sample_text() if options.evaluation.text is None else options.evaluation.text
    against = _local_donors(recipe.stages[-1], donors)
    state = _State.open(out, _state_key(recipe, path, text, options.evaluation.max_tokens, against))
    donor_scores = yield from _score_donors(state, against, text, options.evaluation, cancel)
    results = []
    for k, (value, variant) in enumerate(zip(values, variants)):
        done = state.variant(value)
        if done is None:
            done = yield from _run_variant(variant, donors, out, path, value, (k, len(values)), donor_scores,
                                           options, cancel, text)
            state.add_variant(done)
        else:
            yield VariantDone(k, len(values), done, True)
        results.append(done)
    if not options.keep:
        remove_folder(out / STAGES_FOLDER)
    yield SweepDone(SweepResult(str(path), {name: s.perplexity for name, s in donor_scores.items()}, tuple(results)))


def _check_variants(variants: Sequence[Recipe], values: Sequence[float], donors: Mapping[str, DonorInfo],
                    path: ParamPath) -> None:
    """Refuse a sweep with a variant that would not merge: the recipe's own errors (those of every
    variant) are named as such, else the first value that makes one (out of the parameter's range…)."""
    blockers = [merge_readiness(variant, donors) for variant in variants]
    common = [b for b in blockers[0] if all(b in other for other in blockers[1:])] if len(blockers) > 1 else []
    if common:
        raise UserError(f"the recipe is not valid: {common[0]}{_more(common)}")
    for value, reasons in zip(values, blockers):
        if reasons:
            raise UserError(f"{path} = {value:g} cannot be merged: {reasons[0]}{_more(reasons)}")


def _more(reasons: Sequence[str]) -> str:
    return f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""


def _check_out_dir(out: Path, donors: Mapping[str, DonorInfo]) -> None:
    """Refuse a sweep folder that is, holds or lies in a donor's folder (its variants are written there),
    or that cannot be made (a file or a dead link in its way)."""
    check_folder_path(out.parent, out)
    resolved = out.resolve()
    for model, donor in sorted(donors.items()):
        if donor.path and overlaps(resolved, Path(donor.path).absolute().resolve()):
            raise UserError(f"the sweep folder {out} overlaps the folder of donor {model}; "
                            "choose a folder outside every donor's")


def _check_changes(variants: Sequence[Recipe], donors: Mapping[str, DonorInfo], path: ParamPath) -> None:
    """Refuse a sweep whose values plan the same tensors (a scope below the stage overrides the
    parameter, or its filter matches nothing)."""
    if len(variants) < 2:
        return
    first, last = (plan_recipe(v, donors).stages[-1].tensors for v in (variants[0], variants[-1]))
    if first == last:
        raise UserError(f"sweeping {path} changes no tensor: a slice or model sets it, which takes precedence, "
                        "or its filter matches no tensor")


def _local_donors(stage: Stage, donors: Mapping[str, DonorInfo]) -> dict[str, Path]:
    """The final stage's donors with a local folder, by model name."""
    return {m: Path(d.path) for m in stage.referenced_models
            if (d := donors.get(m)) is not None and d.kind == "folder" and d.path}


def _score_donors(state: _State, against: Mapping[str, Path], text: str, options: EvaluationOptions,
                  cancel: threading.Event | None) -> Generator[EvaluationProgress, None, dict[str, TextScore]]:
    scores = state.donor_scores()
    for name, folder in against.items():
        if name not in scores:
            scores[name] = yield from score_folder(folder, text, replace(options, prompt=None), cancel)
            state.add_donor(name, scores[name])
    return scores


def _run_variant(recipe: Recipe, donors: Mapping[str, DonorInfo], out: Path, path: ParamPath, value: float,
                 position: tuple[int, int], donor_scores: Mapping[str, TextScore], options: SweepOptions,
                 cancel: threading.Event | None, text: str) -> Generator[SweepEvent, None, VariantResult]:
    folder = out / re.sub(r"[^\w.=+-]+", "_", f"{path}-{value:g}")
    yield VariantStarted(*position, value, folder)
    merge = replace(options.merge, overwrite=True, intermediate_dir=out / STAGES_FOLDER)
    try:
        yield from run_merge(recipe, donors, folder, merge, cancel)
        score = yield from score_folder(folder, text, replace(options.evaluation, prompt=None), cancel)
    except (MergeCancelled, EvaluationCancelled):
        remove_folder(folder)
        raise SweepCancelled(f"cancelled at {path} = {value:g}; run the sweep again to resume") from None
    except BaseException:
        remove_folder(folder)
        raise
    if not options.keep:
        remove_folder(folder)
    agreement = {name: agreement_of(score, donor) for name, donor in donor_scores.items()}
    result = VariantResult(value, score.perplexity, agreement, str(folder) if options.keep else None)
    yield VariantDone(*position, result, False)
    return result


def _state_key(recipe: Recipe, path: ParamPath, text: str, max_tokens: int, against: Mapping[str, Path]
               ) -> dict[str, Any]:
    """What the recorded results depend on: a resumed sweep must match it."""
    return {"recipe": hashlib.sha256(dump_recipe(recipe).encode()).hexdigest(), "param": str(path),
            "text": hashlib.sha256(text.encode()).hexdigest(), "max_tokens": max_tokens,
            "donors": {name: str(folder) for name, folder in against.items()}}


class _State:
    """``sweep.json``: the key, the donors' scores and the finished variants, rewritten atomically."""

    def __init__(self, file: Path, data: dict[str, Any]) -> None:
        self.file, self.data = file, data

    @classmethod
    def open(cls, out: Path, key: dict[str, Any]) -> _State:
        file = out / STATE_FILE
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read {file}: {exc}; delete it to start the sweep afresh") from None
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION or data.get("key") != key:
                raise UserError(f"{out} holds a sweep of another recipe, parameter, text or donors ({STATE_FILE}); "
                                "choose another folder or delete it")
            return cls(file, data)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not a sweep folder; choose a new or empty folder")
        out.mkdir(parents=True, exist_ok=True)
        state = cls(file, {"version": STATE_VERSION, "key": key, "donors": {}, "variants": []})
        state.save()
        return state

    def donor_scores(self) -> dict[str, TextScore]:
        return {name: TextScore(Path(d["folder"]), tuple(d["token_ids"]), d["perplexity"], tuple(d["predictions"]))
                for name, d in self.data["donors"].items()}

    def add_donor(self, name: str, score: TextScore) -> None:
        self.data["donors"][name] = {"folder": str(score.folder), "perplexity": score.perplexity,
                                     "token_ids": list(score.token_ids), "predictions": list(score.predictions)}
        self.save()

    def variant(self, value: float) -> VariantResult | None:
        found = next((v for v in self.data["variants"] if v["value"] == value), None)
        if found is None or (found["folder"] and not Path(found["folder"]).is_dir()):  # a kept one was deleted
            return None
        return VariantResult(found["value"], found["perplexity"], found["agreement"], found["folder"])

    def add_variant(self, result: VariantResult) -> None:
        self.data["variants"] = [v for v in self.data["variants"] if v["value"] != result.value]
        self.data["variants"].append({"value": result.value, "perplexity": result.perplexity,
                                      "agreement": result.agreement, "folder": result.folder})
        self.save()

    def save(self) -> None:
        partial = self.file.with_name(f".{self.file.name}.partial")
        partial.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(partial, self.file)
