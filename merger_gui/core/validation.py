"""Check a recipe before merging: everything mergekit gets silently wrong, and plain mistakes.

:func:`validate_recipe` is a pure function of the recipe and what is known of its donors. It
never raises on a bad recipe: every problem becomes a :class:`Finding` with a stable ``code``
(kebab-case), a one-line message that says how to fix it, and where it is. Checks that need
donor facts (layer counts, shapes, tensor names) are skipped for models without a DonorInfo.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from . import quick_fixes as fixes
from .donor import DonorInfo, known_dtype_code
from .errors import RecipeError, UserError
from .methods import METHODS, MethodSpec, method_spec, parameter_default, parameter_facts
from .output_folders import folder_key, stage_folder_name, stage_name_problem
from .parameter_edits import ParamLocation
from .parameters import Scope, as_rule_list, resolve_parameter, scope_chain
from .plan import PlannedTensor, StagePlan, config_donor_name, plan_stage, stage_order, stage_slices
from .quick_fixes import Fix
from .recipe import FilterRule, Gradient, Parameters, Recipe, Scalar, Slice
from .tokenizer_vocab import stage_output_tokens

Severity = Literal["error", "warning"]

KNOWN_KEYS = (
    "merge_method", "slices", "models", "base_model", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template", "name",
)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# DonorInfo field → words for messages; donors of one stage must agree on all of them.
ARCHITECTURE_FIELDS = (
    ("hidden_size", "hidden size"),
    ("num_heads", "attention head count"),
    ("num_kv_heads", "KV head count"),
    ("intermediate_size", "intermediate size"),
    ("head_dim", "head_dim"),
)
_NO_DONOR_ERRORS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Finding:
    """One problem of a recipe; indices are 0-based (``location`` shows them 1-based)."""

    severity: Severity
    code: str
    message: str
    stage: int | None = None
    slice: int | None = None
    source: int | None = None
    key: str | None = None  # the field at fault: "layer_range", "parameters.t[2].value", …
    stage_name: str | None = None
    fix: Fix | None = None  # the one edit the message names, when it names one

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def location(self) -> str:
        """Where the problem is, e.g. ``stage 'Nyxene-11B' › slice 2 › source 1``."""
        parts = []
        if self.stage is not None:
            parts.append(f"stage {self.stage_name!r}" if self.stage_name else f"stage {self.stage + 1}")
        if self.slice is not None:
            parts.append(f"slice {self.slice + 1}")
        if self.source is not None:
            parts.append(f"source {self.source + 1}")
        return " › ".join(parts) or "recipe"


def validate_recipe(
    recipe: Recipe,
    donors: Mapping[str, DonorInfo],
    donor_errors: Mapping[str, str] = _NO_DONOR_ERRORS,
) -> list[Finding]:
    """Every problem of ``recipe``, ordered by stage and slice.

    Args:
        recipe: The recipe to check.
        donors: Donor facts by model name; stages' outputs are planned and added here.
        donor_errors: Why a model could not be resolved, by model name.
    """
    findings: list[Finding] = []
    if not recipe.stages:
        findings.append(Finding("error", "empty-recipe", "the recipe has no merge stage"))
    graph_findings, order = _stage_graph(recipe)
    findings += graph_findings
    known = dict(donors)
    reported: set[str] = set()
    for index in order:
        check = _StageCheck(recipe, index, known, donor_errors, reported)
        findings += check.run()
        stage = recipe.stages[index]
        if stage.name and check.plan is not None:
            known[stage.name] = check.plan.output
    findings.sort(key=lambda f: tuple(-1 if v is None else v for v in (f.stage, f.slice, f.source)))
    return findings


def _stage_graph(recipe: Recipe) -> tuple[list[Finding], tuple[int, ...]]:
    """Duplicate-name and cycle findings, and the order to check stages in."""
    findings = []
    first: dict[str, int] = {}
    folders: dict[str, int] = {}
    for i, stage in enumerate(recipe.stages):
        if not stage.name:
            continue
        if stage.name in first:
            findings.append(Finding(
                "error", "duplicate-stage-name",
                f"stages {first[stage.name] + 1} and {i + 1} are both named {stage.name!r}; "
                "stage names must be unique", i, key="name", stage_name=stage.name))
            continue
        first[stage.name] = i
        problem = stage_name_problem(stage.name)
        other = folders.setdefault(folder_key(stage.name), i)
        if problem:
            findings.append(Finding("error", "stage-folder-name", problem, i, key="name", stage_name=stage.name))
        elif other != i:
            findings.append(Finding(
                "error", "stage-folder-name",
                f"stages {recipe.stages[other].name!r} and {stage.name!r} would share the intermediate folder "
                f"{stage_folder_name(stage.name)!r}; rename one", i, key="name", stage_name=stage.name))
    if findings:
        return findings, tuple(range(len(recipe.stages)))
    try:
        return findings, stage_order(recipe)
    except RecipeError as error:
        findings.append(Finding("error", "stage-cycle", f"{error.bare_message}; a stage can only use "
                                "stages that do not use it", key="name"))
        return findings, tuple(range(len(recipe.stages)))


@dataclass(frozen=True)
class _Scope:
    """One ``parameters`` mapping of a stage and where it sits."""

    parameters: Parameters
    slice: int | None
    source: int | None
    chain: tuple[Scope, ...]  # where a value of this scope's tensors is looked up, as mergekit does


class _StageCheck:
    """All checks of one stage; ``plan`` is set when the stage could be planned."""

    def __init__(self, recipe: Recipe, index: int, donors: Mapping[str, DonorInfo],
                 donor_errors: Mapping[str, str], reported: set[str]) -> None:
        self.recipe = recipe
        self.index = index
        self.stage = recipe.stages[index]
        self.donors = donors
        self.donor_errors = donor_errors
        self.reported = reported  # models whose donor problem an earlier stage reported
        self.spec: MethodSpec | None = method_spec(self.stage.merge_method)
        self.findings: list[Finding] = []
        self.plan: StagePlan | None = None

    def add(self, severity: Severity, code: str, message: str, slice_: int | None = None,
            source: int | None = None, key: str | None = None, fix: Fix | None = None) -> None:
        self.findings.append(Finding(severity, code, message, self.index, slice_, source, key, self.stage.name, fix))

    def run(self) -> list[Finding]:
        self.check_keys()
        self.check_models()
        self.check_slices()
        self.check_base()
        self.check_tokenizer()
        for scope in self.scopes():
            self.check_parameter_values(scope)
        self.check_required_parameters()
        self.check_architecture()
        self.check_vocab()
        self.check_tied_head()
        self.plan_and_check()
        return self.findings

    # --- helpers -----------------------------------------------------------------------

    def donor(self, model: str | None) -> DonorInfo | None:
        return self.donors.get(model) if model else None

    def slices(self) -> tuple[Slice, ...]:
        """Non-empty slices, the ``models:`` form included (needs its donors' layer counts)."""
        return tuple(s for s in stage_slices(self.stage, self.donors) if s.sources)

    def scopes(self) -> Iterator[_Scope]:
        stage = self.stage
        yield _Scope(stage.parameters, None, None, scope_chain(stage, None))
        for si, slice_ in enumerate(stage.slices or ()):
            yield _Scope(slice_.parameters, si, None, scope_chain(stage, si))
            for ki, source in enumerate(slice_.sources):
                yield _Scope(source.parameters, si, ki, scope_chain(stage, si, source.model))
        for ki, entry in enumerate(stage.models or ()):
            yield _Scope(entry.parameters, None, ki, scope_chain(stage, None, entry.model))

    def location_of(self, model: str) -> tuple[int | None, int | None]:
        for si, slice_ in enumerate(self.stage.slices or ()):
            for ki, source in enumerate(slice_.sources):
                if source.model == model:
                    return si, ki
        for ki, entry in enumerate(self.stage.models or ()):
            if entry.model == model:
                return None, ki
        return None, None

    # --- checks without donors ----------------------------------------------------------

    def check_keys(self) -> None:
        stage = self.stage
        if self.spec is None:
            hint = _did_you_mean(stage.merge_method.lower(), METHODS) or f" known: {', '.join(METHODS)}"
            close = _closest(stage.merge_method.lower(), METHODS)
            self.add("error", "unknown-method", f"unknown merge_method {stage.merge_method!r};{hint}",
                     key="merge_method", fix=fixes.method_fix(self.index, close) if close else None)
        for key in stage.extra:
            hint = _did_you_mean(key, KNOWN_KEYS)
            self.add("warning", "unknown-key", f"unknown key {key!r} is ignored by mergekit;{hint or ' remove it'}",
                     key=key)
        for key, value in (("dtype", stage.dtype), ("out_dtype", stage.out_dtype)):
            if value is not None and known_dtype_code(value) not in FLOAT_DTYPES:
                self.add("error", "unknown-dtype",
                         f"{key} {value!r} is not a float dtype; use bfloat16, float16 or float32", key=key)
        if stage.slices is not None and stage.models is not None:
            self.add("error", "slices-and-models", "the stage has both slices and models; keep one of them")
        if not stage.slices and not stage.models:
            self.add("error", "no-models", "the stage merges no model: add slices or models", key="slices")

    def check_models(self) -> None:
        stage_names = set(self.recipe.stage_names()) - {self.stage.name}
        for model in self.stage.referenced_models:
            if model in stage_names or model in self.donors or model in self.reported:
                continue
            si, ki = self.location_of(model)
            close = difflib.get_close_matches(model, sorted(stage_names), n=1, cutoff=0.6)
            if close and "/" not in model and not model.startswith("profile:"):
                self.reported.add(model)
                self.add("error", "unknown-stage",
                         f"{model!r} is neither a donor nor a stage of this recipe; did you mean the stage "
                         f"{close[0]!r}? (mergekit would try to download {model!r})", si, ki, "model",
                         fixes.stage_reference_fix(self.index, model, close[0]))
            elif model in self.donor_errors:
                self.reported.add(model)
                self.add("error", "donor-unavailable", self.donor_errors[model], si, ki, "model")

    def check_slices(self) -> None:
        for si, slice_ in enumerate(self.stage.slices or ()):
            if not slice_.sources:
                self.add("error", "no-sources", "the slice has no sources", si, key="sources")
                continue
            for ki, source in enumerate(slice_.sources):
                self.check_range(si, ki, source.model, source.start, source.end)
            lengths = sorted({s.num_layers for s in slice_.sources if s.num_layers >= 0})
            if len(lengths) > 1:
                detail = ", ".join(f"{s.model} {s.num_layers}" for s in slice_.sources)
                self.add("error", "unequal-source-lengths",
                         f"the slice's sources cover different numbers of layers ({detail}); "
                         "they pair layer by layer, so give every source the same length", si, key="layer_range")
            self.check_source_count(slice_, si)
        if self.stage.slices is None and self.stage.models:
            # The models form is one slice of every model (the base added when not listed).
            self.check_source_count(stage_slices(self.stage, {})[0], None)

    def check_source_count(self, slice_: Slice, si: int | None) -> None:
        """The number of sources the method takes, and the base among them where it needs one.

        ``si`` is None for the models form, whose one slice holds every model and the base.
        """
        spec = self.spec
        if spec is None:
            return
        count = len(slice_.sources)
        base = slice_.base_model or self.stage.base_model
        others = sum(1 for s in slice_.sources if s.model != base)
        this, key = ("this slice", "sources") if si is not None else ("the models list", "models")
        if spec.name == "passthrough" and count > 1:
            self.add("error", "passthrough-sources",
                     f"a passthrough slice takes exactly one source, this one has {count}; "
                     "split it into one slice per source", si, key=key)
        elif spec.name == "slerp" and count != 2:
            self.add("error", "slerp-sources",
                     f"slerp merges exactly two models (the base and one other), {this} has {count}", si, key=key)
        elif spec.name == "nuslerp" and others != 2:
            self.add("error", "nuslerp-models",
                     f"nuslerp merges exactly two models besides the base, {this} has {others}", si, key=key)
        elif spec.name == "multislerp" and others < 1:
            self.add("error", "multislerp-models",
                     f"multislerp needs at least one model besides the base, {this} has none", si, key=key)
        elif spec.name == "model_stock" and count < spec.min_models:
            self.add("error", "too-few-models",
                     f"model_stock needs the base and at least two other models, {this} has {count} in all",
                     si, key=key)
        elif count < spec.min_models and si is not None:  # mergekit returns a lone base as is
            self.add("error", "too-few-models",
                     f"{spec.name} needs at least {spec.min_models} models, {this} has {count}", si, key=key)
        models = [s.model for s in slice_.sources]
        if spec.name == "multislerp" and others == 1 and base in models:
            self.add("warning", "multislerp-lone-model",
                     f"multislerp with base_model {base!r} and one other model returns that model unchanged "
                     "(the base is only the centre of the sphere); remove base_model to interpolate both",
                     si, key="base_model", fix=None if slice_.base_model else fixes.base_model_fix(self.index, None))
        repeated = sorted({m for m in models if models.count(m) > 1})
        if spec.name != "passthrough" and repeated:
            self.add("error", "duplicate-source",
                     f"{', '.join(repeated)} appears more than once in {this}; {spec.name} merges distinct "
                     "models (mergekit refuses duplicate inputs) — use another donor or passthrough", si, key=key)
        takes_base = spec.needs_base or spec.name in ("multislerp", "nuslerp")  # mergekit refuses an absent optional base
        if si is not None and takes_base and base and all(s.model != base for s in slice_.sources):
            self.add("error", "base-not-in-slice",
                     f"base_model {base!r} is not a source of this slice; {spec.name} merges each source "
                     f"against the base, so add {base!r} with the same layer_range length", si, key="base_model")

    def check_range(self, si: int, ki: int, model: str, start: int, end: int) -> None:
        if start > end:
            self.add("error", "reversed-range",
                     f"layer_range [{start}, {end}] of {model} is reversed (mergekit would write "
                     f"num_hidden_layers: {end - start}); write it as [{end}, {start}]", si, ki, "layer_range",
                     fixes.reversed_range_fix(self.index, si, ki, start, end))
            return
        if start < 0:
            self.add("error", "negative-layer", f"layer_range [{start}, {end}] of {model} starts below layer 0",
                     si, ki, "layer_range")
        if start == end:
            self.add("warning", "empty-slice",
                     f"layer_range [{start}, {end}] of {model} selects no layer (the end is exclusive; "
                     f"[{start}, {start + 1}] is layer {start} alone)", si, ki, "layer_range")
        donor = self.donor(model)
        if donor is not None and end > donor.num_layers:
            self.add("error", "range-past-end",
                     f"layer_range [{start}, {end}] ends past the {donor.num_layers} layers of {model} "
                     f"(layers 0–{donor.num_layers - 1}; the end is exclusive, at most {donor.num_layers})",
                     si, ki, "layer_range")

    def check_base(self) -> None:
        stage, spec = self.stage, self.spec
        config = config_donor_name(stage)
        if spec is not None and spec.needs_base and not stage.base_model:
            if stage.models is not None or any(not s.base_model for s in stage.slices or ()):
                self.add("error", "missing-base-model",
                         f"{spec.name} needs a base_model; add `base_model: {config or 'MODEL'}` "
                         "(one of the merged models)", key="base_model",
                         fix=fixes.base_model_fix(self.index, config) if config else None)
            return
        if not stage.base_model and len(stage.referenced_models) > 1 and config:
            source = f"config.json and the tokenizer come from {config} (the first slice's model; mergekit picks " \
                     "one at random)"
            # A base changes what these merge (deltas to it), so it is no way to pin the config.
            advice = f"a base_model would change how {spec.name} merges: make sure the models share their config " \
                "and tokenizer" if spec is not None and spec.name in ("nuslerp", "multislerp") else \
                f"add `base_model: {config}` to make it explicit"
            spherical = spec is not None and spec.name in ("nuslerp", "multislerp")
            fix = None if spherical else fixes.base_model_fix(self.index, config)
            self.add("warning", "no-base-model", f"no base_model: {source}; {advice}", key="base_model", fix=fix)

    def check_tokenizer(self) -> None:
        stage = self.stage
        key = "tokenizer.source" if stage.tokenizer is not None else "tokenizer_source"
        named = [(key, stage.effective_tokenizer_source)]
        if stage.tokenizer is not None:
            named += [(f"tokenizer.tokens.{token}.source", e.source) for token, e in stage.tokenizer.tokens]
        models = ", ".join(stage.referenced_models)
        pad = stage.tokenizer.pad_to_multiple_of if stage.tokenizer is not None else None
        if pad is not None and pad < 0:
            self.add("error", "negative-padding",
                     f"tokenizer.pad_to_multiple_of must be a positive number of rows, not {pad}",
                     key="tokenizer.pad_to_multiple_of")
        for field, source in named:
            if source is not None and source not in ("base", "union") and source not in stage.referenced_models:
                self.add("error", "tokenizer-source-not-in-stage",
                         f"{field} {source!r} is not a model of this stage; use base, union or one of: {models}",
                         key=field)

    def check_parameter_values(self, scope: _Scope) -> None:
        for name, spec in scope.parameters.items():
            key = f"parameters.{name}"
            rules = as_rule_list(spec)
            if rules:
                for r, rule in enumerate(rules):
                    self.check_range_value(scope, name, rule.value, f"{key}[{r}].value")
                self.check_shadowing(scope, name, rules, key)
            else:
                self.check_range_value(scope, name, spec, key)  # type: ignore[arg-type]

    def check_range_value(self, scope: _Scope, name: str, value: Scalar | Gradient, key: str) -> None:
        """Kind and range of each point of a value, as the method's spec of ``name`` says."""
        points = [(f"{key}[{j}]", v) for j, v in enumerate(value)] if isinstance(value, tuple) else [(key, value)]
        method = self.stage.merge_method.lower()
        facts = parameter_facts(method, name)
        if facts is None:
            return
        if facts.kind == "bool":  # mergekit also reads 0 and 1 as false and true
            for point_key, v in points:
                if not isinstance(v, (bool, int, float)) or not isinstance(v, bool) and v not in (0, 1):
                    self.add("error", "not-a-boolean", f"{name} must be true or false, {point_key} is {v!r}",
                             scope.slice, scope.source, point_key)
            return
        low, high = facts.valid
        for point_key, v in points:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.add("error", "not-a-number", f"{name} must be a finite number, {point_key} is {v!r}",
                         scope.slice, scope.source, point_key)
            elif not low <= v <= high:
                self.add("error", "value-out-of-range",
                         f"{name} = {v:g} at {point_key} is outside [{low:g}, {high:g}]", scope.slice,
                         scope.source, point_key)
            elif facts.kind == "int" and not float(v).is_integer():  # mergekit refuses a fractional count
                self.add("error", "not-a-whole-number", f"{name} must be a whole number, {point_key} is {v!r}",
                         scope.slice, scope.source, point_key)
            elif method == "nearswap" and name == "t" and v == 0:
                self.add("warning", "nearswap-zero-t",
                         f"t = 0 at {point_key}: nearswap divides t by the models' difference, which gives NaN "
                         "where they are equal (as in mergekit); use a small positive t", scope.slice,
                         scope.source, point_key)

    def check_shadowing(self, scope: _Scope, name: str, rules: tuple[FilterRule, ...], key: str) -> None:
        for j, rule in enumerate(rules):
            for i, earlier in enumerate(rules[:j]):
                if _is_fallback(earlier):
                    fix = "move the fallback rule to the end of the list"
                    what = "the fallback (no filter)"
                    move = (i, len(rules) - 1)
                elif not _is_fallback(rule) and earlier.filter in rule.filter:  # type: ignore[operator]
                    fix = f"put {rule.filter!r} before {earlier.filter!r}"
                    what = f"filter {earlier.filter!r}"
                    move = (j, i)
                else:
                    continue
                label = "the fallback rule" if _is_fallback(rule) else f"filter {rule.filter!r}"
                self.add("warning", "shadowed-rule",
                         f"rule {j + 1} of {name} ({label}) never applies: rule {i + 1}, {what}, matches its "
                         f"tensors first; {fix}", scope.slice, scope.source, f"{key}[{j}]",
                         fixes.move_rule_fix(self.index, _location(scope), name, *move, fix))
                break

    def check_required_parameters(self) -> None:
        """Required parameters with no value in any scope (per-tensor gaps are found after planning)."""
        spec, stage = self.spec, self.stage
        if spec is None:
            return
        for param in spec.parameters:
            if not param.required:
                continue
            if param.shared:
                present = _has(stage.parameters, param.name) or any(
                    _has(s.parameters, param.name) or any(_has(x.parameters, param.name) for x in s.sources)
                    for s in stage.slices or ())
                if not present:
                    self.add("error", "missing-parameter",
                             f"{spec.name} needs `{param.name}` and the recipe gives none; add it under parameters",
                             key=f"parameters.{param.name}")
                continue
            for scope in self.scopes():
                if scope.source is None:
                    continue
                model = self.scope_model(scope)
                base = self.scope_base(scope)
                if param.non_base and model == base:
                    continue
                if not any(_has(p.parameters, param.name) for p in scope.chain):
                    self.add("error", "missing-parameter",
                             f"{spec.name} needs `{param.name}` for every model; {model} has none",
                             scope.slice, scope.source, f"parameters.{param.name}")

    def scope_model(self, scope: _Scope) -> str:
        if scope.slice is not None:
            return self.stage.slices[scope.slice].sources[scope.source].model  # type: ignore[index]
        return self.stage.models[scope.source].model  # type: ignore[index]

    def scope_base(self, scope: _Scope) -> str | None:
        if scope.slice is not None:
            return self.stage.slices[scope.slice].base_model or self.stage.base_model  # type: ignore[index]
        return self.stage.base_model

    # --- checks with donors -------------------------------------------------------------

    def known_models(self) -> list[tuple[str, DonorInfo]]:
        return [(m, d) for m in self.stage.referenced_models if (d := self.donor(m)) is not None]

    def check_architecture(self) -> None:
        known = self.known_models()
        config = config_donor_name(self.stage)
        known.sort(key=lambda item: item[0] != config)  # compare everyone to the config donor
        if len(known) < 2:
            return
        ref_model, ref = known[0]
        if self.stage.models is not None and len({d.num_layers for _, d in known}) > 1:
            detail = ", ".join(f"{m} {d.num_layers}" for m, d in known)
            self.add("error", "layer-count-mismatch",
                     f"the models have different layer counts ({detail}); the models form merges every layer "
                     "of each, so use slices with equal layer ranges instead", key="models")
        for model, donor in known[1:]:
            for field, words in ARCHITECTURE_FIELDS:
                a, b = getattr(ref, field), getattr(donor, field)
                if a != b:
                    self.add("error", "architecture-mismatch",
                             f"{words} differs: {ref_model} has {a}, {model} has {b}; these donors cannot "
                             "be combined into one model", key=field)

    def check_vocab(self) -> None:
        stage, spec = self.stage, self.spec
        if spec is None or stage.effective_tokenizer_source is not None:
            return
        slices = self.slices()
        if not spec.uses_vocab_merge:
            if not slices:
                return
            roles = (("embed_tokens", slices[0].sources[0].model), ("lm_head", slices[-1].sources[0].model),
                     ("config.json", config_donor_name(stage)))
            sizes = [(what, m, d.vocab_size) for what, m in roles if (d := self.donor(m)) is not None]
            if len({size for _, _, size in sizes}) > 1:
                detail = ", ".join(f"{what} from {m} ({size} rows)" for what, m, size in sizes)
                self.add("error", "passthrough-vocab-mismatch",
                         f"donors have different vocabulary sizes: {detail}; the output would not load — "
                         "add `tokenizer_source: base` to rebuild both to one vocabulary", key="tokenizer_source",
                         fix=fixes.tokenizer_base_fix(self.index))
            return
        sizes = [(m, d.vocab_size) for m, d in self.known_models()]
        if len({size for _, size in sizes}) > 1:
            detail = ", ".join(f"{m}: {size}" for m, size in sizes)
            self.add("error", "vocab-size-mismatch",
                     f"donors have different vocabulary sizes ({detail}) and there is no tokenizer section; "
                     "add `tokenizer_source: base`", key="tokenizer_source", fix=fixes.tokenizer_base_fix(self.index))

    def check_tied_head(self) -> None:
        slices = self.slices()
        if not slices:
            return
        tail_model = slices[-1].sources[0].model
        config_model = config_donor_name(self.stage)
        tail, config = self.donor(tail_model), self.donor(config_model)
        if tail is None or config is None or tail.has_lm_head or config.tie_word_embeddings:
            return
        self.add("warning", "tied-embeddings-last",
                 f"{tail_model} (last slice) has no lm_head, it ties it to its embeddings, but the output "
                 f"config from {config_model} has tie_word_embeddings: false; mergekit would leave lm_head "
                 f"random at load — we copy {tail_model}'s embeddings as lm_head", len(slices) - 1, 0, "model")

    def check_filters(self, tensor_names: set[str]) -> None:
        if not tensor_names:
            return
        candidates = _name_fragments(tensor_names)
        models = ", ".join(m for m, _ in self.known_models())
        for scope in self.scopes():
            for name, spec in scope.parameters.items():
                for r, rule in enumerate(as_rule_list(spec)):
                    if _is_fallback(rule) or any(rule.filter in t for t in tensor_names):
                        continue
                    close = _closest(rule.filter, candidates)  # type: ignore[arg-type]
                    fix = fixes.filter_fix(self.index, _location(scope), name, r, rule.filter, close) if close else None
                    self.add("warning", "filter-no-match",
                             f"filter {rule.filter!r} of {name} matches no tensor of {models}, so the rule never "
                             f"applies{self.fallback_note(scope, name, rule.filter, candidates, tensor_names)}",
                             scope.slice, scope.source, f"parameters.{name}[{r}].filter", fix)

    def fallback_note(self, scope: _Scope, name: str, filter_: str, candidates: list[str],
                      tensor_names: set[str]) -> str:
        close = difflib.get_close_matches(filter_, candidates, n=1, cutoff=0.6)
        if not close:
            return ""
        target = min(t for t in tensor_names if close[0] in t)
        found = resolve_parameter(name, target, 0.0, scope.chain, parameter_default(self.stage.merge_method, name))
        if found.setting is not None:
            gets = _show(found.setting)
        else:
            gets = "no value" if found.value is None else f"the default {_show(found.value)}"
        return f": {target} gets {gets} instead; did you mean {close[0]!r}?"

    def plan_and_check(self) -> None:
        known = self.known_models()
        self.check_filters({t.name for _, d in known for t in d.tensors})
        if len(known) < len(self.stage.referenced_models) or not known:
            return
        try:
            self.plan = plan_stage(self.stage, self.donors, self.index)
        except Exception as error:  # noqa: BLE001 — validation reports, it never raises
            self.add("error", "plan-failed", f"the stage cannot be planned: {error}")
            return
        self.check_planned_parameters(self.plan)
        self.check_planned_inputs(self.plan)
        self.check_normalized_weights(self.plan)
        self.check_della_epsilon(self.plan)
        self.check_whole_numbers(self.plan)
        self.check_token_overrides()

    def check_planned_inputs(self, plan: StagePlan) -> None:
        """An output without layers, and donors that lack a tensor the merge needs from them."""
        if not plan.layers:
            if any(f.is_error and f.key == "layer_range" for f in self.findings):
                return  # a reversed or out-of-range layer_range, already reported
            self.add("error", "no-layers", "the output has no layers: every layer_range is empty "
                     "(the end is exclusive: [k, k + 1] is layer k)", key="layer_range")
            return
        slices = self.slices()
        for tensor in plan.tensors:
            given = {s.model for s in tensor.sources}
            lacking = [s.model for s in slices[tensor.slice_index].sources if s.model not in given]
            if lacking:
                self.add("error", "missing-tensor",
                         f"{lacking[0]} has no tensor for {tensor.name}, which the merge needs from every source "
                         "of its slice; the donor is incomplete or of another architecture", tensor.slice_index)
                return
        for model, layer, missing in _incomplete_layers(plan, self.donors):
            self.add("error", "missing-tensor",
                     f"layer {layer} of {model} has no {missing} (its other layers have it); "
                     "the donor is incomplete, the output would lack that tensor", key="layer_range")
            return
        config = self.donors.get(plan.config_donor)
        expected = {_layout(config, i) for i in range(config.num_layers)} if config and config.tensors else set()
        for usage in plan.donor_usage:
            donor = self.donors.get(usage.model)
            for layer in (i for i, c in enumerate(usage.counts) if c) if donor and donor.tensors and expected else ():
                layout = _layout(donor, layer)
                if layout not in expected:
                    other = min(expected, key=lambda e: len(e ^ layout))
                    extra, lacking = sorted(layout - other), sorted(other - layout)
                    what = f"has {extra[0]}" if extra else f"lacks {lacking[0]}"
                    self.add("error", "layer-layout-mismatch",
                             f"layer {layer} of {usage.model} {what}, unlike the layers of {plan.config_donor} "
                             "(the config donor); these donors are of different architectures", key="layer_range")
                    return

    def check_normalized_weights(self, plan: StagePlan) -> None:
        """Weights that sum to zero where the method divides by their sum (mergekit writes inf/NaN)."""
        method = plan.merge_method.lower()
        if method not in ("linear", "task_arithmetic", "dare_linear", "breadcrumbs", "della_linear", "multislerp"):
            return
        switch = "normalize_weights" if method == "multislerp" else "normalize"
        fewest = 2 if method == "multislerp" else 1  # multislerp returns a lone model as is
        for tensor in plan.tensors:
            if not tensor.parameters.get(switch, parameter_default(method, switch)):
                continue
            weights = [s.parameters["weight"] for s in tensor.sources if "weight" in s.parameters]
            if len(weights) >= fewest and all(isinstance(w, (int, float)) for w in weights) \
                    and abs(sum(weights)) < 1e-8:
                self.add("error", "weights-sum-to-zero",
                         f"the weights of {tensor.name} sum to zero and {switch}: true divides by their sum "
                         f"(mergekit writes inf/NaN); change a weight or set {switch}: false",
                         key="parameters.weight")
                return

    def check_della_epsilon(self, plan: StagePlan) -> None:
        """DELLA draws keep-probabilities in density ± epsilon, which must stay inside (0, 1)."""
        method = plan.merge_method.lower()
        if method not in ("della", "della_linear"):
            return
        for tensor in plan.tensors:
            for source in tensor.sources:
                density, epsilon = (source.parameters.get(n, parameter_default(method, n))
                                    for n in ("density", "epsilon"))
                if not all(isinstance(v, (int, float)) for v in (density, epsilon)) or not 0 < density < 1:
                    continue  # other checks report non-numbers; density 0 or 1 draws nothing
                if not (density + epsilon < 1 and density - epsilon > 0):
                    self.add("error", "della-epsilon",
                             f"{source.model} at {tensor.name}: density {density:g} ± epsilon {epsilon:g} leaves "
                             "(0, 1); DELLA needs density - epsilon > 0 and density + epsilon < 1",
                             key="parameters.epsilon")
                    return

    def check_whole_numbers(self, plan: StagePlan) -> None:
        """Count parameters a gradient reads as a fraction for some tensor (mergekit refuses them)."""
        if any(f.code == "not-a-whole-number" for f in self.findings):
            return
        counts = [p.name for p in self.spec.parameters if p.kind == "int"] if self.spec else []
        for name in counts:
            for tensor in plan.tensors:
                value = tensor.parameters.get(name)
                if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
                    self.add("error", "not-a-whole-number",
                             f"{name} must be a whole number, but its gradient gives {value!r} for {tensor.name}; "
                             "use a gradient whose values at every layer are whole, or filter rules",
                             key=f"parameters.{name}")
                    return

    def check_token_overrides(self) -> None:
        """``tokenizer.tokens`` rows taken from a token the named model does not have."""
        stage = self.stage
        if stage.tokenizer is None or not stage.tokenizer.tokens:
            return
        try:
            vocabularies = stage_output_tokens(stage, self.donors).vocabularies
        except UserError:
            return  # unreadable tokenizers: the donor checks and the engine say why
        for token, entry in stage.tokenizer.tokens:
            key = f"tokenizer.tokens.{token}.source"
            vocab = vocabularies.get(entry.source or "")
            if entry.kind == "zero" or vocab is None:
                continue
            if entry.kind == "model_token" and entry.token_id is None and entry.token not in vocab.tokens:
                self.add("error", "unknown-token",
                         f"tokenizer token {token!r} takes the row of {entry.token!r}, which {entry.source} "
                         "does not have", key=key)
            elif entry.kind == "model_token" and entry.token_id is not None \
                    and not 0 <= entry.token_id < vocab.rows:
                self.add("error", "unknown-token",
                         f"tokenizer token {token!r} takes row {entry.token_id} of {entry.source}, which has "
                         f"{vocab.rows} rows", key=key)

    def check_planned_parameters(self, plan: StagePlan) -> None:
        """Required parameters that some tensors get no value for (every rule's filter missed them)."""
        spec = self.spec
        if spec is None or any(f.code == "missing-parameter" for f in self.findings):
            return
        for param in spec.parameters:
            if not param.required:
                continue
            if param.shared:
                gaps = [t.name for t in plan.tensors if param.name not in t.parameters]
            else:
                gaps = [t.name for t in plan.tensors for s in t.sources
                        if param.name not in s.parameters and not (param.non_base and s.model == self.base_of(t))]
            if gaps:
                self.add("error", "missing-parameter",
                         f"`{param.name}` has no value for {len(gaps)} tensor(s), e.g. {gaps[0]}: no rule matches "
                         f"them; add a fallback rule without filter at the end", key=f"parameters.{param.name}")

    def base_of(self, tensor: PlannedTensor) -> str | None:
        slices = self.slices()
        slice_ = slices[tensor.slice_index] if tensor.slice_index < len(slices) else None
        return (slice_.base_model if slice_ else None) or self.stage.base_model


def _incomplete_layers(plan: StagePlan, donors: Mapping[str, DonorInfo]) -> Iterator[tuple[str, int, str]]:
    """(model, layer, tensor suffix) of used donor layers missing a tensor their other layers have.

    A layer counts as incomplete when its tensors are a strict subset of the donor's most common
    layer layout and no other layer shares its layout (so deliberately different layers, like a
    MoE model's dense first layers, are left alone).
    """
    for usage in plan.donor_usage:
        donor = donors.get(usage.model)
        if donor is None or not donor.tensors:
            continue
        layouts = [_layout(donor, i) for i in range(donor.num_layers)]
        common = Counter(layouts).most_common(1)[0][0]
        for layer, count in enumerate(usage.counts):
            layout = layouts[layer]
            if count and layout < common and layouts.count(layout) == 1:
                yield usage.model, layer, sorted(common - layout)[0]


def _layout(donor: DonorInfo, layer: int) -> frozenset[str]:
    """The tensor names of one donor layer without their layer prefix."""
    return frozenset(_layer_suffix(t.name) for t in donor.layer_tensors(layer))


def _layer_suffix(name: str) -> str:
    return re.sub(r"^.*?\.\d+\.", "", name, count=1)


def _is_fallback(rule: FilterRule) -> bool:
    return rule.filter is None or rule.filter == "*"


def _has(parameters: Parameters, name: str) -> bool:
    return parameters.get(name, ()) != ()


def _closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = _closest(word, choices)
    return f" did you mean {close!r}?" if close else ""


def _location(scope: _Scope) -> ParamLocation:
    """Where a scope's parameters are, as the parameter edits address them."""
    if scope.slice is None and scope.source is not None:
        return ParamLocation(model_index=scope.source)  # a ``models:`` entry
    return ParamLocation(scope.slice, scope.source)


def _name_fragments(tensor_names: set[str]) -> list[str]:
    """Dotted runs of up to three name parts without layer numbers: ``model.norm``, ``self_attn``…"""
    fragments: set[str] = set()
    for name in {re.sub(r"\.\d+\.", ".N.", n) for n in tensor_names}:
        parts = name.split(".")
        for i in range(len(parts)):
            for j in range(i + 1, min(len(parts), i + 3) + 1):
                run = parts[i:j]
                if "N" not in run and run[-1] not in ("weight", "bias"):
                    fragments.add(".".join(run))
    return sorted(fragments)


def _show(value: Scalar | Gradient) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
