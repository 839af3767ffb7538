"""The layer plan and validation findings of the open recipe, kept up to date (debounced)."""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QColor

from merger_gui.core.donor import DonorInfo
from merger_gui.core.partial_plan import PartialPlan, plan_partially
from merger_gui.core.plan import Plan, StagePlan
from merger_gui.core.validation import Finding, validate_recipe

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .theme import DONOR_HUES

DEBOUNCE_MS = 60


class LivePlan(QObject):
    """Recomputes the plan and the findings when the recipe or the donors change.

    Planning (:func:`~merger_gui.core.partial_plan.plan_partially`) is pure and fast, so it
    runs on the GUI thread, debounced so a burst of changes costs one computation. Stages
    that can be planned are kept in :attr:`stage_plans` even when another stage cannot
    (``plan`` is then None and ``error`` says why).
    """

    plan_changed = Signal(object)  # Plan | None
    findings_changed = Signal(object)  # list[Finding]

    def __init__(self, document: RecipeDocument, registry: DonorRegistry, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.registry = registry
        self.partial = PartialPlan()
        self.findings: list[Finding] = []
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

    @property
    def plan(self) -> Plan | None:
        return self.partial.plan

    @property
    def error(self) -> str | None:
        return self.partial.error

    @property
    def stage_plans(self) -> Mapping[int, StagePlan]:
        return self.partial.stage_plans

    @property
    def known_donors(self) -> Mapping[str, DonorInfo]:
        return self.partial.known_donors

    def stage_plan(self, index: int) -> StagePlan | None:
        return self.partial.stage_plans.get(index)

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
        self.partial = plan_partially(recipe, self.registry.donors)
        # Each stage planned once: validation checks the plans just made (unless the stage
        # order is in doubt, where the two could see different earlier stages).
        planned = self.partial.stage_plans if self.partial.order_error is None else {}
        try:
            self.findings = validate_recipe(recipe, self.registry.donors, self.registry.errors, planned)
        except Exception as exc:  # noqa: BLE001 - validation must never take the window down
            self.findings = [Finding("error", "validation-failed", f"validation failed: {exc}")]
        self.plan_changed.emit(self.plan)
        self.findings_changed.emit(self.findings)
