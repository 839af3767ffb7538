"""Dependencies point one way: qt → engine → core. The core never pulls in Qt or torch."""

import subprocess
import sys
import pkgutil

import merger_gui.core


def _modules_loaded_after_import(module_names: list[str]) -> set[str]:
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in module_names)
        + "print('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_core_imports_neither_qt_nor_torch():
    core_modules = [f"merger_gui.core.{m.name}" for m in pkgutil.iter_modules(merger_gui.core.__path__)]
    assert "merger_gui.core.plan" in core_modules
    loaded = _modules_loaded_after_import(core_modules)
    for heavy in ("PySide6", "pyqtgraph", "torch", "mergekit", "transformers"):
        assert heavy not in loaded, f"merger_gui.core pulls in {heavy}"


def test_cli_core_commands_do_not_import_qt():
    loaded = _modules_loaded_after_import(["merger_gui.cli"])
    assert "PySide6" not in loaded and "torch" not in loaded
