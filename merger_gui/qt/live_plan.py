"""The layer plan and validation findings of the open recipe, kept up to date (debounced)."""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QColor

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import RecipeError
from merger_gui.core.plan import Plan, StagePlan, plan_stage, stage_order
from merger_gui.core.validation import Finding, validate_recipe

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .theme import DONOR_HUES

DEBOUNCE_MS = 60


class LivePlan(QObject):
    """Recomputes the :class:`Plan` and the findings when the recipe or the donors change.

    Planning is pure and fast, so it runs on the GUI thread, debounced so a burst of
    changes costs one computation. Stages that can be planned are kept in
    :attr:`stage_plans` even when another stage cannot (``plan`` is then None and
    ``error`` says why).
    """

    plan_changed = Signal(object)  # Plan | None
    findings_changed = Signal(object)  # list[Finding]

    def __init__(self, document: RecipeDocument, registry: DonorRegistry, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.registry = registry
        self.plan: Plan | None = None
        self.findings: list[Finding] = []
        self.error: str | None = None
        self.stage_plans: dict[int, StagePlan] = {}
        self.known_donors: dict[str, DonorInfo] = {}
        self._colors: dict[str, QColor] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.refresh_now)
        document.recipe_changed.connect(self.schedule)
        registry.changed.connect(self.schedule)
        self.schedule()

    @property
    def is_pending(self) -> bool:
        return self._timer.isActive()

    def schedule(self, *_: object) -> None:
        self._timer.start()

    def stage_plan(self, index: int) -> StagePlan | None:
        return self.stage_plans.get(index)

    def donor_color(self, name: str) -> QColor:
        """A colour per model name, fixed for the session once given."""
        if name not in self._colors:
            self._colors[name] = QColor(DONOR_HUES[len(self._colors) % len(DONOR_HUES)])
        return self._colors[name]

    def refresh_now(self) -> None:
        """Recompute at once (the debounce timer calls this)."""
        self._timer.stop()
        recipe = self.document.recipe
        for stage in recipe.stages:
            for name in stage.referenced_models:
                self.donor_color(name)
        known = dict(self.registry.donors)
        plans: dict[int, StagePlan] = {}
        errors: list[str] = []
        try:
            order = stage_order(recipe)
        except RecipeError as exc:
            order, errors = tuple(range(len(recipe.stages))), [str(exc)]
        for index in order:
            stage = recipe.stages[index]
            try:
                plans[index] = plan_stage(stage, known, index)
            except Exception as exc:  # noqa: BLE001 - any broken recipe must leave the GUI usable
                label = f"stage {stage.name!r}" if stage.name else f"stage {index + 1}"
                errors.append(f"{label}: {exc}" if recipe.is_multi_stage else str(exc))
                continue
            if stage.name:
                known[stage.name] = plans[index].output
        self.stage_plans = plans
        self.known_donors = known
        self.error = errors[0] if errors else None
        self.plan = Plan(tuple(plans[i] for i in order)) if not errors and plans else None
        if not plans and not errors:
            self.error = "the recipe has no models"
        try:
            self.findings = validate_recipe(recipe, self.registry.donors, self.registry.errors)
        except Exception as exc:  # noqa: BLE001 - validation must never take the window down
            self.findings = [Finding("error", "validation-failed", f"validation failed: {exc}")]
        self.plan_changed.emit(self.plan)
        self.findings_changed.emit(self.findings)
