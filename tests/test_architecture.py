"""Dependencies point one way: cli → qt → engine → core. Heavy libraries load only when used.

import-linter checks the whole import graph (contracts in pyproject.toml, run by tests/run.sh);
these tests check what a module loads when it is imported, module by module, so a torch or Qt
import added at the top of any CLI subcommand or engine module fails here.
"""

import pkgutil
import subprocess
import sys

import pytest

import merger_gui.cli
import merger_gui.core
import merger_gui.engine

HEAVY = ("PySide6", "pyqtgraph", "torch", "transformers", "mergekit", "gguf")
# Engine modules that do tensor math import torch at the top; the run loop imports them only when needed.
ENGINE_MATH = {"methods", "merge_inputs", "spherical_methods", "task_vector_methods", "pairwise_methods",
               "vocabulary"}


def _modules(package) -> list[str]:
    return [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys\nimport {module}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in out.stdout.split()} | set(out.stdout.split())


def test_the_module_lists_are_real():
    assert "merger_gui.core.plan" in _modules(merger_gui.core)
    assert "merger_gui.cli.merge_command" in _modules(merger_gui.cli)
    assert ENGINE_MATH.issubset(m.rsplit(".", 1)[1] for m in _modules(merger_gui.engine))


@pytest.mark.parametrize("module", _modules(merger_gui.core))
def test_core_modules_import_neither_qt_nor_torch(module):
    loaded = _loaded_after_import(module)
    assert not loaded & set(HEAVY), f"{module} pulls in {sorted(loaded & set(HEAVY))}"


@pytest.mark.parametrize("module", ["merger_gui.cli", *_modules(merger_gui.cli)])
def test_cli_modules_load_qt_and_torch_only_when_used(module):
    loaded = _loaded_after_import(module)
    assert not loaded & set(HEAVY), f"{module} pulls in {sorted(loaded & set(HEAVY))}"


@pytest.mark.parametrize("module", _modules(merger_gui.engine))
def test_engine_modules_never_load_qt(module):
    loaded = _loaded_after_import(module)
    assert "PySide6" not in loaded and "pyqtgraph" not in loaded
    if module.rsplit(".", 1)[1] not in ENGINE_MATH:
        assert "torch" not in loaded, f"{module} imports torch at the top; import it where a tensor is needed"


def test_the_window_starts_without_torch_or_transformers():
    loaded = _loaded_after_import("merger_gui.qt.main_window")
    assert "PySide6" in loaded
    assert not loaded & {"torch", "transformers", "gguf", "mergekit"}
