"""Every fact about a tensor dtype the app knows, in one table.

A dtype has three spellings: its safetensors code (``BF16``, what headers, plans and the writer
use), its torch name (``bfloat16``, what recipes, config.json and torch use) and a short label
(``bf16``, what the window shows). Recipes may also use a few aliases (``fp16``, ``half``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class DType:
    """One dtype and its spellings.

    Attributes:
        code: safetensors dtype code, e.g. ``BF16``.
        torch_name: torch dtype name (``torch.<name>``) and recipe spelling, e.g. ``bfloat16``.
        label: Short label for people, e.g. ``bf16``.
        size: Bytes per element.
        float_rank: Rank in float promotion (equal ranks promote to float32, as torch does);
            None for a dtype a merge does not compute in (integers, float8).
        pickable: Offered as a stage's ``dtype`` / ``out_dtype`` in the window.
        aliases: Further names a recipe may use.
    """

    code: str
    torch_name: str
    label: str
    size: int
    float_rank: int | None = None
    pickable: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def is_float(self) -> bool:
        """A float dtype a merge can compute in (and a stage's ``dtype`` may name)."""
        return self.float_rank is not None


DTYPES: tuple[DType, ...] = (
    DType("F16", "float16", "fp16", 2, float_rank=1, pickable=True, aliases=("fp16", "half")),
    DType("BF16", "bfloat16", "bf16", 2, float_rank=1, pickable=True, aliases=("bf16",)),
    DType("F32", "float32", "fp32", 4, float_rank=2, pickable=True, aliases=("fp32", "float")),
    DType("F64", "float64", "fp64", 8, float_rank=3),
    DType("F8_E4M3", "float8_e4m3fn", "fp8_e4m3", 1),
    DType("F8_E5M2", "float8_e5m2", "fp8_e5m2", 1),
    DType("I64", "int64", "int64", 8),
    DType("I32", "int32", "int32", 4),
    DType("I16", "int16", "int16", 2),
    DType("I8", "int8", "int8", 1),
    DType("U8", "uint8", "uint8", 1),
    DType("BOOL", "bool", "bool", 1),
)
BY_CODE: MappingProxyType[str, DType] = MappingProxyType({d.code: d for d in DTYPES})
_BY_NAME = MappingProxyType({name: d for d in DTYPES for name in (d.torch_name, *d.aliases)})
# The dtypes a user may pick for a stage, in the order the window offers them.
PICKABLE_NAMES: tuple[str, ...] = tuple(d.torch_name for d in DTYPES if d.pickable)


def dtype_of(name: str) -> DType:
    """The dtype a code (``BF16``), torch name (``bfloat16``, ``torch.bfloat16``) or alias (``bf16``) means.

    Raises:
        ValueError: no known dtype has that name.
    """
    if name in BY_CODE:
        return BY_CODE[name]
    try:
        return _BY_NAME[name.lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


def dtype_code(name: str) -> str:
    """safetensors code (``BF16``) of a dtype name (``bfloat16``, ``bf16``, ``BF16``)."""
    return dtype_of(name).code


def known_dtype_code(name: str) -> str | None:
    """Like :func:`dtype_code`, but None for a name that is no known dtype."""
    try:
        return dtype_code(name)
    except ValueError:
        return None


def torch_name(code: str) -> str:
    """torch name (``bfloat16``) of a safetensors code (``BF16``)."""
    return BY_CODE[code].torch_name


def is_float_code(code: str | None) -> bool:
    """Whether ``code`` is a float dtype a merge computes in (F16, BF16, F32, F64)."""
    dtype = BY_CODE.get(code) if code else None
    return dtype is not None and dtype.is_float


def promoted_dtype_code(codes: list[str]) -> str:
    """The common dtype of float inputs, as torch promotes them (F16 with BF16 gives F32).

    Inputs that are not all floats a merge computes in keep the first one's dtype.
    """
    distinct = list(dict.fromkeys(codes))
    if len(distinct) == 1 or not all(is_float_code(c) for c in distinct):
        return distinct[0]
    top = max((BY_CODE[c] for c in distinct), key=lambda d: d.float_rank or 0)
    return "F32" if top.float_rank == 1 else top.code


def dtype_label(name: str) -> str:
    """Short label (``bf16``) of a dtype code or name; a name no dtype has, as it is."""
    try:
        return dtype_of(name).label
    except ValueError:
        return name
