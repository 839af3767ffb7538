"""How much each layer changes the hidden state, and how big a jump each seam of a recipe asks for.

A donor runs over a text (transformers, CPU or CUDA, one model in memory at a time; a MODEL+LORA
donor with its adapter merged into the loaded weights as mergekit merges it); hooks on
its decoder layers see the hidden state entering and leaving each layer, so nothing but running
sums and the last ``block`` inputs is kept. The angular distance of two hidden states of a token
is ``arccos(cos(x, y)) / π`` (0: same direction, 1: opposite), averaged over the tokens:

- **layer distance** of layer l: between what enters layer l and what leaves it (ShortGPT's
  Block Influence is ``1 − cos`` of the same); a layer that barely changes the state is a
  candidate to drop;
- **block distance** of n layers from l: between what enters layer l and what leaves layer
  l + n − 1, as PruneMe computes it (the last layer's output is taken before the final norm);
- **seam distance** of donor X's layer i followed by donor Y's layer j: between what X's layer i
  outputs and what Y's layer j normally receives, on the same tokens; with the best partner, the
  j of Y closest to X's output.

:func:`analyze_activations` and :func:`analyze_seams` are plain generators yielding
:class:`ActivationProgress` and ending with :class:`ActivationsDone` / :class:`SeamsDone`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError
from merger_gui.core.plan import LayerMap, LayerSource

from .evaluate import sample_text
from .layer_similarity import AnalysisCancelled
from .lora import merge_adapter
from .transformers_model import loaded_model, model_folder, token_ids

if TYPE_CHECKING:
    import torch

__all__ = ["ActivationOptions", "ActivationProgress", "ActivationsDone", "LayerDistances", "Seam", "SeamDistance",
           "SeamsDone", "analyze_activations", "analyze_seams", "angular_distance", "stage_seams"]

LayerVisitor = Callable[[int, "torch.Tensor", "torch.Tensor"], None]
ModelSource = str | Path | DonorInfo  # a model folder, or a donor's facts (its folder and any LoRA adapter)


@dataclass(frozen=True)
class ActivationOptions:
    """The text (None: the sample shipped with the app), its token limit, block sizes and device."""

    text: str | None = None
    max_tokens: int = 1024
    blocks: tuple[int, ...] = ()
    device: str = "cpu"


@dataclass(frozen=True)
class LayerDistances:
    """One donor's mean angular distances: per layer, and per block size n from each first layer."""

    donor: str
    tokens: int
    layer_distance: tuple[float, ...]
    block_distance: Mapping[int, tuple[float, ...]]


@dataclass(frozen=True)
class Seam:
    """Where a stage's output goes from ``source``'s layer to ``target``'s (index: first output layer after it)."""

    stage: str
    index: int
    source: LayerSource
    target: LayerSource


@dataclass(frozen=True)
class SeamDistance:
    seam: Seam
    distance: float
    best_to_layer: int  # the target donor's layer whose input is closest to the source layer's output


@dataclass(frozen=True)
class ActivationProgress:
    step: int  # 1-based
    steps: int
    message: str


@dataclass(frozen=True)
class ActivationsDone:
    distances: tuple[LayerDistances, ...]


@dataclass(frozen=True)
class SeamsDone:
    seams: tuple[SeamDistance, ...]
    distances: tuple[LayerDistances, ...]  # of every donor run, from its last run


def angular_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over rows (tokens) of ``arccos(cos(x_t, y_t)) / π``, in float64."""
    import torch

    cosine = torch.nn.functional.cosine_similarity(x.detach().double(), y.detach().double(), dim=-1)
    return float((torch.arccos(cosine.clamp(-1.0, 1.0)) / torch.pi).mean())


def stage_seams(stage: str, layer_map: LayerMap) -> list[Seam]:
    """The seams of a planned stage: at each slice boundary, the first source of the layer before
    and of the layer after (a seam inside one donor's natural order is left out)."""
    seams = []
    for index in layer_map.seams:
        before, after = layer_map.layers[index - 1].sources[0], layer_map.layers[index].sources[0]
        if (before.model, before.layer + 1) != (after.model, after.layer):
            seams.append(Seam(stage, index, before, after))
    return seams


def analyze_activations(donors: Sequence[tuple[str, ModelSource]], options: ActivationOptions = ActivationOptions(),
                        cancel: threading.Event | None = None) -> Iterator[ActivationProgress | ActivationsDone]:
    """Per-layer and per-block distances of each donor in turn (see the module).

    Raises:
        AnalysisCancelled: ``cancel`` was set.
        UserError: no model folder, a block larger than the model, a text shorter than 1 token…
    """
    steps = _Steps(2 * len(donors), cancel)
    results = []
    for name, folder in donors:
        for event in _run_donor(name, folder, options, steps):
            if isinstance(event, _Ran):
                results.append(event.tracker.result(name))
            else:
                yield event
    yield ActivationsDone(tuple(results))


def analyze_seams(seams: Sequence[Seam], folders: Mapping[str, ModelSource],
                  options: ActivationOptions = ActivationOptions(), cancel: threading.Event | None = None
                  ) -> Iterator[ActivationProgress | SeamsDone]:
    """Distance of every seam and its best partner: each source donor runs once, keeping the outputs
    of its seam layers, then each target donor runs once, comparing each layer's input with them.

    Raises:
        AnalysisCancelled: ``cancel`` was set.
        UserError: a donor without a folder, donors that tokenize the text differently…
    """
    missing = sorted({m for s in seams for m in (s.source.model, s.target.model)} - set(folders))
    if missing:
        raise UserError(f"no local model folder for {', '.join(missing)}: seams need donors that can run")
    sources = list(dict.fromkeys(s.source.model for s in seams))
    targets = list(dict.fromkeys(s.target.model for s in seams))
    steps = _Steps(2 * (len(sources) + len(targets)), cancel)
    outputs: dict[LayerSource, Any] = {}
    trackers: dict[str, _DistanceTracker] = {}
    for model in sources:
        wanted = {s.source.layer for s in seams if s.source.model == model}
        keeper = _OutputKeeper(model, wanted, outputs)
        for event in _run_donor(model, folders[model], options, steps, keeper):
            if isinstance(event, _Ran):
                trackers[model] = event.tracker
            else:
                yield event
    distances: dict[Seam, list[float]] = {}
    for model in targets:
        mine = [s for s in seams if s.target.model == model]
        comparer = _InputComparer(mine, outputs, distances)
        for event in _run_donor(model, folders[model], options, steps, comparer):
            if isinstance(event, _Ran):
                trackers[model] = event.tracker
            else:
                yield event
    results = tuple(SeamDistance(s, distances[s][s.target.layer], min(range(len(distances[s])),
                                                                      key=distances[s].__getitem__))
                    for s in seams)
    yield SeamsDone(results, tuple(t.result(m) for m, t in trackers.items()))


class _DistanceTracker:
    """Running sums of layer and block distances; holds the last ``max(blocks)`` layer inputs."""

    def __init__(self, layers: int, blocks: Sequence[int]) -> None:
        self.layers, self.blocks, self.tokens = layers, tuple(blocks), 0
        self.layer_distance = [0.0] * layers
        self.block_distance = {n: [0.0] * (layers - n + 1) for n in self.blocks}
        self.inputs: deque[Any] = deque(maxlen=max(self.blocks, default=1))

    def __call__(self, layer: int, entering: torch.Tensor, leaving: torch.Tensor) -> None:
        self.inputs.append(entering)
        self.layer_distance[layer] = angular_distance(entering, leaving)
        for n in self.blocks:
            if layer >= n - 1:  # inputs[-n] entered layer - n + 1
                self.block_distance[n][layer - n + 1] = angular_distance(self.inputs[-n], leaving)

    def result(self, donor: str) -> LayerDistances:
        return LayerDistances(donor, self.tokens, tuple(self.layer_distance),
                              {n: tuple(v) for n, v in self.block_distance.items()})


class _OutputKeeper:
    """Keeps what the wanted layers output (one tensor of tokens × hidden per seam source)."""

    def __init__(self, model: str, layers: set[int], outputs: dict[LayerSource, Any]) -> None:
        self.model, self.layers, self.outputs = model, layers, outputs

    def __call__(self, layer: int, entering: torch.Tensor, leaving: torch.Tensor) -> None:
        if layer in self.layers:
            self.outputs[LayerSource(self.model, layer)] = leaving.detach().clone()


class _InputComparer:
    """For each seam into this donor, the distance of its source's output to every layer's input."""

    def __init__(self, seams: Sequence[Seam], outputs: Mapping[LayerSource, Any],
                 distances: dict[Seam, list[float]]) -> None:
        self.seams, self.outputs, self.distances = seams, outputs, distances

    def __call__(self, layer: int, entering: torch.Tensor, leaving: torch.Tensor) -> None:
        for seam in self.seams:
            source = self.outputs[seam.source]
            if source.shape != entering.shape:
                raise UserError(f"{seam.source.model} and {seam.target.model} differ in hidden size or "
                                "tokenize the text differently: their hidden states cannot be compared")
            self.distances.setdefault(seam, []).append(angular_distance(source.to(entering.device), entering))


@dataclass(frozen=True)
class _Ran:
    tracker: _DistanceTracker


class _Steps:
    def __init__(self, steps: int, cancel: threading.Event | None) -> None:
        self.steps, self.done, self.cancel = steps, 0, cancel

    def next(self, message: str) -> ActivationProgress:
        if self.cancel is not None and self.cancel.is_set():
            raise AnalysisCancelled("cancelled")
        self.done = min(self.steps, self.done + 1)
        return ActivationProgress(self.done, self.steps, message)


def _run_donor(name: str, source: ModelSource, options: ActivationOptions, steps: _Steps,
               *visitors: LayerVisitor) -> Iterator[ActivationProgress | _Ran]:
    """Load the donor, run it once over the text with a distance tracker and ``visitors`` on every layer;
    yields :class:`_Ran` (the tracker) last."""
    donor = source if isinstance(source, DonorInfo) else None
    if donor is not None and donor.path is None:
        raise UserError(f"donor {name} has no local weights ({donor.kind}): activations need a model that can run")
    path = model_folder(donor.path if donor is not None else source)  # type: ignore[arg-type]
    yield steps.next(f"loading {name}")
    with loaded_model(path, options.device) as (model, tokenizer):
        if donor is not None and donor.adapter:
            merge_adapter(model, name, donor)
        yield steps.next(f"running {name}")
        layers = _decoder_layers(model, name)
        blocks = [n for n in options.blocks if n > len(layers)]
        if blocks:
            raise UserError(f"--block {blocks[0]} is more than {name}'s {len(layers)} layers")
        tracker = _DistanceTracker(len(layers), options.blocks)
        ids = _token_ids(model, tokenizer, options, name)
        tracker.tokens = len(ids)
        _forward(model, layers, ids, [tracker, *visitors])
    yield _Ran(tracker)


def _token_ids(model: Any, tokenizer: Any, options: ActivationOptions, name: str) -> list[int]:
    text = sample_text() if options.text is None else options.text
    ids = token_ids(model, tokenizer, text, options.max_tokens)
    if not ids:
        raise UserError(f"the text is empty once tokenized by {name}")
    return ids


def _decoder_layers(model: Any, name: str) -> Any:
    """The model's list of decoder layers: the module list as long as ``num_hidden_layers``."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"cannot find the decoder layers of {name} ({type(model).__name__})")


def _forward(model: Any, layers: Any, ids: list[int], visitors: Sequence[LayerVisitor]) -> None:
    """One forward pass; each visitor sees (layer, hidden state entering, hidden state leaving) as 2-D tensors."""
    import torch

    entering: dict[int, torch.Tensor] = {}

    def before(index: int) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            entering[index] = (args[0] if args else kwargs["hidden_states"])[0]
        return hook

    def after(index: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            leaving = (output[0] if isinstance(output, tuple) else output)[0]
            for visit in visitors:
                visit(index, entering[index], leaving)
            del entering[index]
        return hook

    handles = [h for i, layer in enumerate(layers)
               for h in (layer.register_forward_pre_hook(before(i), with_kwargs=True),
                         layer.register_forward_hook(after(i)))]
    try:
        with torch.inference_mode():
            model(torch.tensor([ids], device=next(model.parameters()).device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
