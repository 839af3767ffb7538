"""The donors of the open recipe: what each is, whether it fits the others, and how to add or map one."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QAction, QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QFileDialog, QHBoxLayout, QHeaderView, QInputDialog, QLabel, QMainWindow, QMenu, QPushButton, QStyle, QToolButton,
    QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
)

from merger_gui.core.donor import DonorInfo
from merger_gui.core.dtypes import dtype_label
from merger_gui.core.lora_config import adapter_facts
from merger_gui.core.profiles import PROFILE_PREFIX, profile_names
from merger_gui.core.quick_fixes import Fix
from merger_gui.core.slice_edits import rename_model
from merger_gui.core.units import format_size

from .document import Companion, RecipeDocument
from .donor_registry import DonorRegistry
from .findings_view import apply_quick_fix
from .inspection import DonorInspector, error_label
from .live_plan import LivePlan
from .lora_dialog import LoraDonorDialog
from .settings import Settings

NAME_ROLE = Qt.ItemDataRole.UserRole + 1
LORA_COLOR = QColor("#7c3aed")
ERROR_COLOR, MISNAMED_COLOR = QColor("#dc2626"), QColor("#b45309")
# DonorInfo field → words; donors that disagree on one cannot be merged together.
SHAPE_FIELDS = (("hidden_size", "hidden size"), ("num_heads", "attention heads"), ("vocab_size", "vocabulary"))


def incompatibilities(donors: dict[str, DonorInfo]) -> dict[str, list[str]]:
    """For each donor that differs from most others: what differs (``"hidden size 5120, others 4096"``)."""
    problems: dict[str, list[str]] = {}
    if len(donors) < 2:
        return problems
    for field, words in SHAPE_FIELDS:
        common, _ = Counter(getattr(d, field) for d in donors.values()).most_common(1)[0]
        for name, info in donors.items():
            value = getattr(info, field)
            if value != common:
                problems.setdefault(name, []).append(f"{words} {value}, the others {common}")
    return problems


def model_part(reference: str) -> str:
    """The model of a ``MODEL+LORA`` reference (``reference`` itself without a ``+``)."""
    return reference.partition("+")[0]


def short_name(name: str) -> str:
    """How a donor is labelled: the last part of its model's folder or repo id."""
    return model_part(name).rstrip("/").split("/")[-1] or name


def _dot(color: QColor) -> QIcon:
    pixmap = QPixmap(12, 12)
    pixmap.fill(color)
    return QIcon(pixmap)


class DonorPanel(QWidget):
    """A table of donors (name, architecture, layers, size, dtype) with add and map actions."""

    COLUMNS = ("Donor", "Layers", "Size")  # architecture and dtype are in the tooltip

    def __init__(self, document: RecipeDocument, registry: DonorRegistry, inspector: DonorInspector,
                 live_plan: LivePlan, settings: Settings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.registry, self.inspector, self.live_plan = document, registry, inspector, live_plan
        self.settings = settings or Settings()
        style = self.style()
        self._warning = style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        self._error = style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical)
        self._busy = style.standardIcon(QStyle.StandardPixmap.SP_BrowserReload)

        # A push button leaves room for its menu arrow; a tool button's arrow covers the label.
        self.add_button = QPushButton("Add donor", self)
        self.add_button.setToolTip("Add a donor model: a local folder, a Hugging Face repo, a model with a LoRA "
                                   "adapter or a built-in shape profile")
        self.add_button.setMenu(self._source_menu(None, self))
        self.status = QLabel(self)
        self.status.setObjectName("sectionTitle")
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.status, 1)
        top.addWidget(self.add_button)

        self.tree = QTreeWidget(self)
        self.tree.setColumnCount(len(self.COLUMNS))
        self.tree.setHeaderLabels(list(self.COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(24)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        for column in range(1, len(self.COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        hint = QLabel("Add donors with <b>Add donor</b> or drop model folders on the window; then drag over a "
                      "donor's layers in the designer to add a slice.", self)
        hint.setWordWrap(True)
        hint.setEnabled(False)  # drawn in the muted text colour
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.tree, 1)
        layout.addWidget(hint)

        registry.changed.connect(self.refresh)
        document.recipe_changed.connect(self.refresh)
        inspector.pending_changed.connect(self.refresh)
        live_plan.findings_changed.connect(self.refresh)  # right after plan_changed, with the misnamed stages
        self.refresh()

    # ---- contents -------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Models of the recipe that are not its own stages, then donors added by hand (misnamed
        stage references are not donors: see :meth:`misnamed_stages`)."""
        recipe = self.document.recipe
        stage_names = set(recipe.stage_names()) | set(self.misnamed_stages())
        names = [m for s in recipe.stages for m in s.referenced_models if m not in stage_names]
        names += [n for n in self.registry.refs if n not in stage_names]
        return list(dict.fromkeys(names))

    def misnamed_stages(self) -> dict[str, Fix]:
        """Model names that validation takes for a misspelt stage name → the fix naming the stage."""
        return {str(f.fix.args[0]): f.fix for f in self.live_plan.findings
                if f.code == "unknown-stage" and f.fix is not None and self.registry.donor(str(f.fix.args[0])) is None}

    def missing(self) -> list[str]:
        """Names with no donor information and no inspection under way."""
        pending = self.inspector.pending
        return [n for n in self.names() if self.registry.donor(n) is None and n not in pending]

    def refresh(self, *_: object) -> None:
        names = self.names()
        pending = self.inspector.pending
        problems = incompatibilities({n: d for n in names if (d := self.registry.donor(n))})
        self.tree.clear()
        for name in names:
            info = self.registry.donor(name)
            item = QTreeWidgetItem([short_name(name), "", ""])
            item.setData(0, NAME_ROLE, name)
            ref = self.registry.refs.get(name)
            tip = [name] + ([f"from {ref}"] if ref and ref != name else [])
            if info is not None:
                item.setText(1, str(info.num_layers))
                item.setText(2, format_size(info.weight_bytes))
                item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                tip.append(f"{info.architecture} · {info.num_layers} layers · {dtype_label(info.dtype)} · "
                           f"hidden {info.hidden_size} · "
                           f"{info.num_heads} heads · vocab {info.vocab_size}")
                tip += list(info.warnings)
                if info.adapter:
                    tip += self._add_adapter_row(item, info.adapter)
                if name in problems:
                    item.setIcon(0, self._warning)
                    tip.append("Does not fit the other donors: " + "; ".join(problems[name]))
                else:
                    item.setIcon(0, _dot(self.live_plan.donor_color(name)))
            elif name in pending:
                item.setIcon(0, self._busy)
                item.setText(1, "inspecting…")
                tip.append(f"reading {pending[name]}")
            else:
                item.setIcon(0, self._error)
                error = self.registry.errors.get(name)
                label = error_label(ref, error) if error else "not mapped"
                item.setText(1, label.partition(":")[0])
                item.setForeground(1, ERROR_COLOR)
                tip.append(error or "no donor chosen yet")
                tip.append("Right-click › Map to… to choose a folder, repo or profile")
                if error and ":" in label:  # the reason, on a line of its own under the name
                    reason = QTreeWidgetItem(item, [label])
                    reason.setFirstColumnSpanned(True)
                    reason.setForeground(0, ERROR_COLOR)
                    reason.setToolTip(0, error)
            tooltip = "\n".join(tip)
            for column in range(len(self.COLUMNS)):
                item.setToolTip(column, tooltip)
            self.tree.addTopLevelItem(item)
            if info is None and name not in pending:
                self._add_map_button(item, name)
        for name, fix in self.misnamed_stages().items():
            self._add_misnamed_row(name, fix)
        self.tree.expandAll()
        misnamed = len(self.misnamed_stages())
        missing = len(self.missing())
        known = sum(self.registry.donor(n) is not None for n in names)
        text = f"{known} of {len(names)} donors ready" if names else "No donors yet"
        if pending:
            text += f" · inspecting {len(pending)}"
        elif missing:
            text += f" · {missing} to map"
        if misnamed:
            text += f" · {misnamed} misnamed stage{'s' * (misnamed > 1)}"
        self.status.setText(text)

    @staticmethod
    def _add_adapter_row(item: QTreeWidgetItem, adapter: str) -> list[str]:
        """A line under a MODEL+LORA donor: ``+ LoRA r=16 · adapter``; returns the tooltip's lines."""
        facts = adapter_facts(adapter)
        lines = facts.describe()
        row = QTreeWidgetItem(item, [f"{facts.label} · {short_name(adapter)}"])
        row.setFirstColumnSpanned(True)
        row.setForeground(0, LORA_COLOR)
        row.setToolTip(0, "\n".join(lines))
        return lines

    def _add_misnamed_row(self, name: str, fix: Fix) -> None:
        """A model name that is a misspelt stage name: not a donor to map, a reference to fix."""
        item = QTreeWidgetItem([name, "stage name?", ""])
        item.setIcon(0, self._warning)
        item.setForeground(1, MISNAMED_COLOR)
        tip = f"{name!r} is no donor: it looks like a misspelt stage name ({fix.label})"
        for column in range(len(self.COLUMNS)):
            item.setToolTip(column, tip)
        self.tree.addTopLevelItem(item)
        button = QToolButton(self.tree)
        button.setText("Fix")
        button.setAutoRaise(True)
        button.setToolTip(f"{fix.label[0].upper()}{fix.label[1:]} (one undo step)")
        button.clicked.connect(lambda: apply_quick_fix(self.document, fix, self.registry))
        self.tree.setItemWidget(item, 2, button)

    def _add_map_button(self, item: QTreeWidgetItem, name: str) -> None:
        button = QToolButton(self.tree)
        button.setText("Map to…")
        button.setAutoRaise(True)
        button.setToolTip(f"Choose the donor that {name!r} stands for")
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        button.setMenu(self._source_menu(name, button))
        self.tree.setItemWidget(item, 2, button)

    # ---- actions --------------------------------------------------------------------------

    def _source_menu(self, name: str | None, parent: QWidget) -> QMenu:
        """Folder… / Hugging Face repo… / Shape profile ›, adding a donor or mapping ``name``."""
        menu = QMenu(parent)
        menu.addAction("Local folder…", lambda: self.add_folder_dialog(name))
        menu.addAction("Hugging Face repo…", lambda: self.add_repo_dialog(name))
        menu.addAction("Model with a LoRA adapter…", lambda: self.add_lora_dialog(name))
        profiles = menu.addMenu("Shape profile")
        for profile in profile_names():
            profiles.addAction(profile, partial(self.add_donor, PROFILE_PREFIX + profile, name))
        return menu

    def add_donor(self, ref: str, name: str | None = None) -> str:
        """Inspect ``ref`` as donor ``name``; returns the name.

        Without a name a folder or repo is named by its reference (so the exported YAML
        works in mergekit as is) and a profile by its profile name, made unique so that two
        donors of one shape can sit side by side (rename them afterwards).
        """
        if name is None:
            name = ref if not ref.startswith(PROFILE_PREFIX) else self.registry.unique_name(
                ref.removeprefix(PROFILE_PREFIX))
        self.inspector.inspect(name, ref)
        return name

    def rename_donor(self, old: str, new: str) -> bool:
        """Rename a donor everywhere (registry and every recipe reference) as one undo step."""
        new = new.strip()
        if not new or new == old or new in self.registry.refs or new in self.document.recipe.stage_names():
            return False
        registry, after = self.registry, rename_model(self.document.recipe, old, new)
        if after == self.document.recipe:  # a donor the recipe does not use yet: no recipe edit
            registry.rename(old, new)
            return True
        # The registry is renamed inside the undo step, so undo and redo keep the name mapped.
        follow = Companion(redo=lambda: registry.rename(old, new), undo=lambda: registry.rename(new, old))
        self.document.apply(after, f"Rename donor {old} to {new}", follow)
        return True

    def rename_dialog(self, name: str) -> None:
        new, ok = QInputDialog.getText(self, "Rename donor", "Name used in the recipe:", text=name)
        if ok and not self.rename_donor(name, new) and isinstance(window := self.window(), QMainWindow):
            window.statusBar().showMessage(f"Cannot rename {name} to {new.strip()!r}: empty or taken", 5000)

    def add_folder(self, folder: Path, name: str | None = None) -> str:
        self.settings.set_last_folder("donor", Path(folder).parent)
        return self.add_donor(str(folder), name)

    def add_folder_dialog(self, name: str | None = None) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Donor model folder", self.settings.last_folder("donor"))
        if folder:
            self.add_folder(Path(folder), name)

    def add_repo_dialog(self, name: str | None = None) -> None:
        repo, ok = QInputDialog.getText(self, "Hugging Face repo", "Repo id (org/name, optionally @revision):",
                                        text=name if name and "/" in name else "")
        if ok and repo.strip():
            self.add_donor(repo.strip(), name)

    def add_with_adapter(self, model: str, adapter: str, name: str | None = None) -> str:
        """Add (or map ``name`` to) ``model`` with LoRA ``adapter``: the ``MODEL+LORA`` reference,
        which names the donor in the recipe as mergekit reads it."""
        return self.add_donor(f"{model}+{adapter}", name)

    def add_lora_dialog(self, name: str | None = None) -> None:
        model, _, adapter = (name or "").partition("+")
        dialog = LoraDonorDialog(None, adapter, self.settings.last_folder("donor"), self)
        dialog.model_edit.setText(model)
        if dialog.exec():
            self.add_with_adapter(dialog.model(), dialog.adapter(), name)

    def set_adapter(self, name: str, adapter: str | None) -> str | None:
        """Attach LoRA ``adapter`` to donor ``name`` (None: detach it), as one undo step: the donor is
        renamed ``MODEL+ADAPTER`` everywhere in the recipe and inspected again. Returns the new
        name, or None when it is taken."""
        info = self.registry.donor(name)
        carries = info is not None and info.adapter is not None

        def renamed(reference: str) -> str:
            model = model_part(reference) if carries else reference
            return f"{model}+{adapter}" if adapter else model

        new_name, new_ref = renamed(name), renamed(self.registry.refs.get(name, name))
        if new_name == name:
            return name
        if new_name in self.registry.refs or new_name in self.document.recipe.stage_names():
            return None
        registry, inspector, entry = self.registry, self.inspector, self.registry.entry(name)

        def redo() -> None:
            registry.remove(name)
            inspector.inspect(new_name, new_ref)

        def undo() -> None:
            registry.remove(new_name)
            registry.restore(name, entry)

        after = rename_model(self.document.recipe, name, new_name)
        if after == self.document.recipe:  # a donor the recipe does not use yet: no recipe edit
            redo()
        else:
            verb = f"Attach LoRA adapter to {short_name(name)}" if adapter else f"Detach LoRA from {short_name(name)}"
            self.document.apply(after, verb, Companion(redo=redo, undo=undo))
        return new_name

    def attach_adapter_dialog(self, name: str) -> None:
        info = self.registry.donor(name)
        carries = info is not None and info.adapter is not None
        ref = self.registry.refs.get(name, name)
        adapter = info.adapter if info is not None and info.adapter else ""
        dialog = LoraDonorDialog(model_part(ref) if carries else ref, adapter, self.settings.last_folder("donor"), self)
        if dialog.exec() and self.set_adapter(name, dialog.adapter()) is None \
                and isinstance(window := self.window(), QMainWindow):
            window.statusBar().showMessage("Cannot attach the adapter: another donor already has that name", 5000)

    def _context_menu(self, pos: QPoint) -> None:
        item = self.tree.itemAt(pos)
        if item is None:
            return
        name = item.data(0, NAME_ROLE)
        if name is None:  # a reason line or a misnamed stage reference
            return
        menu = QMenu(self)
        mapping = self._source_menu(name, menu)
        mapping.setTitle("Map to")
        menu.addMenu(mapping)
        menu.addAction("Rename…", lambda: self.rename_dialog(name))
        info = self.registry.donor(name)
        if info is not None and info.kind != "profile":
            menu.addAction("Change LoRA adapter…" if info.adapter else "Attach LoRA adapter…",
                           lambda: self.attach_adapter_dialog(name))
            if info.adapter:
                menu.addAction("Detach LoRA adapter", lambda: self.set_adapter(name, None))
        remove = QAction("Remove donor", menu)
        remove.triggered.connect(lambda: self.registry.remove(name))
        menu.addAction(remove)
        menu.exec(self.tree.viewport().mapToGlobal(pos))
