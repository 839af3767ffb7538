"""What every check of one stage reads: the stage, its donors, its parameter scopes; findings are added here."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..donor import DonorInfo
from ..methods import MethodSpec, method_spec
from ..parameters import Scope, scope_chain
from ..plan import PlannedTensor, StagePlan, stage_slices
from ..quick_fixes import Fix
from ..recipe import Parameters, Recipe, Slice
from .findings import Finding, Severity


@dataclass(frozen=True)
class ParamScope:
    """One ``parameters`` mapping of a stage and where it sits."""

    parameters: Parameters
    slice: int | None
    source: int | None
    chain: tuple[Scope, ...]  # where a value of this scope's tensors is looked up, as mergekit does


class StageContext:
    """One stage under check: its findings so far, and ``plan`` once the stage could be planned."""

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

    def donor(self, model: str | None) -> DonorInfo | None:
        return self.donors.get(model) if model else None

    def slices(self) -> tuple[Slice, ...]:
        """Non-empty slices, the ``models:`` form included (needs its donors' layer counts)."""
        return tuple(s for s in stage_slices(self.stage, self.donors) if s.sources)

    def scopes(self) -> Iterator[ParamScope]:
        stage = self.stage
        yield ParamScope(stage.parameters, None, None, scope_chain(stage, None))
        for si, slice_ in enumerate(stage.slices or ()):
            yield ParamScope(slice_.parameters, si, None, scope_chain(stage, si))
            for ki, source in enumerate(slice_.sources):
                yield ParamScope(source.parameters, si, ki, scope_chain(stage, si, source.model))
        for ki, entry in enumerate(stage.models or ()):
            yield ParamScope(entry.parameters, None, ki, scope_chain(stage, None, entry.model))

    def location_of(self, model: str) -> tuple[int | None, int | None]:
        for si, slice_ in enumerate(self.stage.slices or ()):
            for ki, source in enumerate(slice_.sources):
                if source.model == model:
                    return si, ki
        for ki, entry in enumerate(self.stage.models or ()):
            if entry.model == model:
                return None, ki
        return None, None

    def known_models(self) -> list[tuple[str, DonorInfo]]:
        return [(m, d) for m in self.stage.referenced_models if (d := self.donor(m)) is not None]

    def scope_model(self, scope: ParamScope) -> str:
        if scope.slice is not None:
            return self.stage.slices[scope.slice].sources[scope.source].model  # type: ignore[index]
        return self.stage.models[scope.source].model  # type: ignore[index]

    def scope_base(self, scope: ParamScope) -> str | None:
        if scope.slice is not None:
            return self.stage.slices[scope.slice].base_model or self.stage.base_model  # type: ignore[index]
        return self.stage.base_model

    def base_of(self, tensor: PlannedTensor) -> str | None:
        slices = self.slices()
        slice_ = slices[tensor.slice_index] if tensor.slice_index < len(slices) else None
        return (slice_.base_model if slice_ else None) or self.stage.base_model


def closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = closest(word, choices)
    return f" did you mean {close!r}?" if close else ""
