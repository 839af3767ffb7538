"""The inputs of one tensor merge, shared by every method module (they import this, not each other).

Parameter values come from the plan; a value the plan leaves out falls back to the method's
default in :mod:`merger_gui.core.methods`, the one place defaults are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from merger_gui.core.errors import UserError
from merger_gui.core.methods import parameter_default


class MergeInputs:
    """The inputs of one tensor merge and their parameters, with error reporting."""

    def __init__(self, method: str, name: str, tensors: tuple[torch.Tensor, ...], models: tuple[str, ...],
                 base_model: str | None, shared: Mapping[str, Any], per_model: tuple[Mapping[str, Any], ...],
                 generator: torch.Generator | None) -> None:
        self.method = method
        self.name = name
        self.tensors = tensors
        self.models = models
        self.base_model = base_model
        self.shared = shared
        self.per_model = per_model
        self.generator = generator

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.name}: {message}")

    @property
    def base_index(self) -> int | None:
        if self.base_model is None or self.base_model not in self.models:
            return None
        return self.models.index(self.base_model)

    def require_base(self) -> int:
        index = self.base_index
        if index is None:
            what = "no base_model is set" if self.base_model is None else f"base model {self.base_model} lacks it"
            raise self.fail(f"{self.method} needs the base model's tensor, but {what}")
        return index

    def non_base(self) -> list[int]:
        return [i for i in range(len(self.models)) if i != self.base_index]

    def shared_value(self, key: str) -> Any:
        """Shared parameter ``key``: the plan's value, else the method's default."""
        value = self.shared.get(key)
        if value is None:
            value = parameter_default(self.method, key)
        if value is None:
            raise self.fail(f"{self.method} parameter {key!r} is not set")
        return value

    def model_value(self, index: int, key: str) -> Any:
        """Per-model parameter ``key`` of input ``index``: the plan's value, else the method's default."""
        value = self.per_model[index].get(key)
        if value is None:
            value = parameter_default(self.method, key)
        if value is None:
            raise self.fail(f"{self.method} parameter {key!r} is not set for {self.models[index]}")
        return value

    def singleton_copies(self) -> bool:
        """mergekit copies a tensor only one input has for these methods."""
        if self.method in ("slerp", "nuslerp", "arcee_fusion"):
            return True
        return self.method in ("model_stock", "nearswap") and self.base_index == 0

    def non_floating_buffer(self) -> torch.Tensor | None:
        if all(t.is_floating_point() for t in self.tensors):
            return None
        first = self.tensors[0]
        if any(t.dtype != first.dtype or not torch.equal(t, first) for t in self.tensors[1:]):
            raise self.fail("this non-floating-point buffer differs between donors")
        return first.clone()

    def check_shapes(self) -> None:
        shapes = [tuple(t.shape) for t in self.tensors]
        if any(s != shapes[0] for s in shapes[1:]):
            listed = ", ".join(f"{m} {list(s)}" for m, s in zip(self.models, shapes))
            raise self.fail(f"shapes differ between donors ({listed})")
