"""Light and dark looks: Fusion style, a palette, canvas colours and one colour per donor."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

# Distinct hues that read on both light and dark canvases (Tableau 10, reordered).
DONOR_HUES = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1",
    "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac",
)


@dataclass(frozen=True)
class CanvasColors:
    """Colours of the stack canvas for one theme."""

    background: QColor
    column: QColor
    cell_border: QColor
    text: QColor
    muted_text: QColor
    seam: QColor
    skipped: QColor
    highlight: QColor
    selection: QColor


@dataclass(frozen=True)
class Theme:
    name: str  # "light" | "dark"
    canvas: CanvasColors

    @property
    def is_dark(self) -> bool:
        return self.name == "dark"


LIGHT = Theme("light", CanvasColors(
    background=QColor("#f7f8fa"), column=QColor("#ffffff"), cell_border=QColor("#d5d9e0"),
    text=QColor("#1f2328"), muted_text=QColor("#6b7280"), seam=QColor("#1f2328"),
    skipped=QColor("#9ca3af"), highlight=QColor("#ffbf00"), selection=QColor("#2563eb"),
))
DARK = Theme("dark", CanvasColors(
    background=QColor("#1e2127"), column=QColor("#2a2e36"), cell_border=QColor("#3b404a"),
    text=QColor("#e6e8eb"), muted_text=QColor("#9aa3ad"), seam=QColor("#f3f4f6"),
    skipped=QColor("#6b7280"), highlight=QColor("#ffcc33"), selection=QColor("#60a5fa"),
))

_current: Theme = LIGHT


def current_theme() -> Theme:
    return _current


def system_prefers_dark() -> bool:
    hints = QGuiApplication.styleHints()
    try:
        from PySide6.QtCore import Qt

        return hints.colorScheme() == Qt.ColorScheme.Dark
    except AttributeError:  # Qt < 6.5
        return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def _palette(dark: bool) -> QPalette:
    p = QPalette()
    roles = QPalette.ColorRole
    if dark:
        colors = {
            roles.Window: "#272a30", roles.WindowText: "#e6e8eb", roles.Base: "#1e2127",
            roles.AlternateBase: "#2a2e36", roles.ToolTipBase: "#30343c", roles.ToolTipText: "#e6e8eb",
            roles.Text: "#e6e8eb", roles.Button: "#30343c", roles.ButtonText: "#e6e8eb",
            roles.BrightText: "#ff6b6b", roles.Highlight: "#3b82f6", roles.HighlightedText: "#ffffff",
            roles.Link: "#60a5fa", roles.PlaceholderText: "#7c8590", roles.Mid: "#3b404a",
            roles.Dark: "#16181c", roles.Light: "#3b404a", roles.Midlight: "#33373f", roles.Shadow: "#0b0c0e",
        }
    else:
        colors = {
            roles.Window: "#eef0f3", roles.WindowText: "#1f2328", roles.Base: "#ffffff",
            roles.AlternateBase: "#f5f6f8", roles.ToolTipBase: "#ffffff", roles.ToolTipText: "#1f2328",
            roles.Text: "#1f2328", roles.Button: "#f5f6f8", roles.ButtonText: "#1f2328",
            roles.BrightText: "#b91c1c", roles.Highlight: "#2563eb", roles.HighlightedText: "#ffffff",
            roles.Link: "#2563eb", roles.PlaceholderText: "#8a9099", roles.Mid: "#c9ced6",
            roles.Dark: "#a0a6b0", roles.Light: "#ffffff", roles.Midlight: "#e3e6ea", roles.Shadow: "#6b7280",
        }
    for role, color in colors.items():
        p.setColor(role, QColor(color))
    muted = QColor(colors[roles.PlaceholderText])
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, muted)
    return p


STYLESHEET = """
QDockWidget::title { padding: 4px 6px; font-weight: 600; }
QTabBar::tab { padding: 5px 12px; }
QStatusBar QLabel { padding: 0 6px; }
QToolBar { spacing: 4px; }
QLabel#sectionTitle { font-weight: 600; }
"""


def apply_theme(app: QApplication, name: str = "system") -> Theme:
    """Use Fusion with the light or dark palette (``"system"`` follows the desktop)."""
    global _current
    dark = name == "dark" or (name == "system" and system_prefers_dark())
    _current = DARK if dark else LIGHT
    app.setStyle("Fusion")
    app.setPalette(_palette(dark))
    app.setStyleSheet(STYLESHEET)
    return _current
