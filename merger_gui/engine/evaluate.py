"""Is a model any good? Perplexity on a text, next-token agreement with donors, greedy generation.

:func:`evaluate_model` is a plain generator like :func:`~merger_gui.engine.run.run_merge`: it
yields :class:`EvaluationProgress` (and :class:`EvaluationWarning`) events and ends with
:class:`EvaluationDone`. transformers and torch are imported only when a model is loaded. One
model is in memory at a time: the model is scored and generates, is released, then each donor
is loaded and scored in turn; of each only the perplexity and its argmax token ids (one integer
per position) are kept. Cancelling (the ``cancel`` event, checked between steps and between
generated tokens) raises :class:`EvaluationCancelled`.

Perplexity is exp of the mean negative log-likelihood of every token of the text after the
first, the text tokenized as the model's tokenizer does by default (special tokens added) and
cut to ``max_tokens``. Agreement with a donor is the share of those positions where the donor's
most likely next token is the model's.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.errors import UserError

from .transformers_model import first_line, loaded_model, model_folder, quiet_transformers, token_ids

if TYPE_CHECKING:  # imported when a model is loaded
    import torch

__all__ = [
    "DonorScore", "Evaluation", "EvaluationCancelled", "EvaluationDone", "EvaluationEvent", "EvaluationOptions",
    "EvaluationProgress", "EvaluationWarning", "TextScore", "agreement_of", "evaluate_model", "far_worse",
    "read_text_file", "sample_text", "score_folder", "score_text",
]

SAMPLE_TEXT = "sample-text.txt"
CHARS_PER_TOKEN = 64  # far more than any tokenizer's average: a text file is read this far per token
FAR_WORSE = 2.0  # a merge whose perplexity exceeds this many times the best donor's is flagged


class EvaluationCancelled(UserError):
    """The evaluation was cancelled."""


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and where.

    Attributes:
        text: The text to score; None scores the sample text shipped with the app.
        max_tokens: The text is cut to this many tokens (at least 2).
        prompt: Greedy generation from this prompt (through the chat template when the
            tokenizer has one); None generates nothing.
        max_new_tokens: At most this many generated tokens.
        device: ``cpu`` (float32) or ``cuda`` (the model's stored dtype).
    """

    text: str | None = None
    max_tokens: int = 1024
    prompt: str | None = None
    max_new_tokens: int = 48
    device: str = "cpu"


@dataclass(frozen=True)
class TextScore:
    """A model's figures on the text: the token ids it read, its perplexity, and its most likely
    next token at every position scored (what agreement compares)."""

    folder: Path
    token_ids: tuple[int, ...]
    perplexity: float
    predictions: tuple[int, ...]


@dataclass(frozen=True)
class DonorScore:
    donor: str
    perplexity: float
    agreement: float | None  # None when the donor tokenizes the text differently


@dataclass(frozen=True)
class Evaluation:
    """The result; :meth:`to_json` is ``merger-gui evaluate --json``."""

    model: str
    tokens: int
    perplexity: float
    against: tuple[DonorScore, ...] = ()
    generation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "tokens": self.tokens, "perplexity": self.perplexity,
                "against": [{"donor": d.donor, "perplexity": d.perplexity, "agreement": d.agreement}
                            for d in self.against],
                "generation": self.generation}

    @property
    def far_worse(self) -> bool:
        return far_worse(self.perplexity, [d.perplexity for d in self.against])


@dataclass(frozen=True)
class EvaluationProgress:
    step: int  # 1-based
    steps: int
    message: str


@dataclass(frozen=True)
class EvaluationWarning:
    message: str


@dataclass(frozen=True)
class EvaluationDone:
    evaluation: Evaluation


EvaluationEvent = EvaluationProgress | EvaluationWarning | EvaluationDone


def sample_text() -> str:
    """The text scored by default: a few paragraphs of public-domain prose shipped with the app."""
    return files("merger_gui.resources").joinpath(SAMPLE_TEXT).read_text(encoding="utf-8")


def read_text_file(path: str | Path, max_tokens: int) -> str:
    """The start of a text file, enough for ``max_tokens`` tokens (a huge file is not read whole).

    Raises:
        UserError: not a regular file, unreadable, or not UTF-8 text.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"text file {path} does not exist" if not file.exists() else f"{path} is not a regular file")
    try:
        with file.open(encoding="utf-8") as stream:
            return stream.read(CHARS_PER_TOKEN * max_tokens + 4096)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def far_worse(perplexity: float, donor_perplexities: Sequence[float]) -> bool:
    """Whether ``perplexity`` is more than :data:`FAR_WORSE` times the best donor's."""
    finite = [p for p in donor_perplexities if math.isfinite(p)]
    return bool(finite) and not perplexity <= FAR_WORSE * min(finite)


def evaluate_model(model_dir: str | Path, against: Sequence[str | Path] = (),
                   options: EvaluationOptions = EvaluationOptions(),
                   cancel: threading.Event | None = None) -> Iterator[EvaluationEvent]:
    """Score ``model_dir`` on the text, generate from the prompt, then score each donor in turn.

    Args:
        model_dir: A model folder with config.json, weights and a tokenizer.
        against: Donor folders to compare with (perplexity and agreement).
        options: Text, token limits, prompt and device.
        cancel: Set it to stop between steps.

    Raises:
        EvaluationCancelled: ``cancel`` was set.
        UserError: a missing folder, no tokenizer, an architecture transformers cannot load…
    """
    folders = [model_folder(model_dir), *(model_folder(d) for d in against)]
    text = sample_text() if options.text is None else options.text
    steps = 2 * len(folders) + (options.max_new_tokens if options.prompt is not None else 0)
    counter = _Steps(steps, cancel)
    yield counter.next(f"loading {folders[0].name}")
    score, generation = yield from _score_and_generate(folders[0], text, options, counter)
    results = []
    for name, folder in zip(against, folders[1:]):
        yield counter.next(f"loading {folder.name}")
        with loaded_model(folder, options.device) as (model, tokenizer):
            yield counter.next(f"scoring {folder.name}")
            donor = score_text(model, tokenizer, folder, text, options.max_tokens)
        agreement = agreement_of(score, donor)
        if agreement is None:
            yield EvaluationWarning(f"{folder.name} tokenizes the text differently from {folders[0].name}: "
                                    "no agreement computed")
        results.append(DonorScore(str(name), donor.perplexity, agreement))
    yield EvaluationDone(Evaluation(str(model_dir), len(score.token_ids), score.perplexity, tuple(results),
                                    generation))


def score_folder(folder: str | Path, text: str, options: EvaluationOptions = EvaluationOptions(),
                 cancel: threading.Event | None = None) -> Generator[EvaluationProgress, None, TextScore]:
    """Load ``folder`` and score it on ``text`` (two progress steps); returns its :class:`TextScore`."""
    path = model_folder(folder)
    counter = _Steps(2, cancel)
    yield counter.next(f"loading {path.name}")
    with loaded_model(path, options.device) as (model, tokenizer):
        yield counter.next(f"scoring {path.name}")
        return score_text(model, tokenizer, path, text, options.max_tokens)


def agreement_of(model: TextScore, donor: TextScore) -> float | None:
    """Share of positions where both predict the same next token; None when they read different ids."""
    if model.token_ids != donor.token_ids:
        return None
    same = sum(a == b for a, b in zip(model.predictions, donor.predictions))
    return same / len(model.predictions)


def score_text(model: Any, tokenizer: Any, folder: Path, text: str, max_tokens: int) -> TextScore:
    """Perplexity and next-token predictions of a loaded ``model`` on ``text`` (see the module)."""
    import torch

    ids = token_ids(model, tokenizer, text, max_tokens)
    if len(ids) < 2:
        raise UserError(f"the text is {len(ids)} token{'s' * (len(ids) != 1)} long for {folder.name}; "
                        "perplexity needs at least 2")
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=device)).logits[0, :-1]
        targets = torch.tensor(ids[1:], device=device)
        nll = _negative_log_likelihoods(logits, targets)
        predictions = logits.argmax(dim=-1)
    return TextScore(folder, tuple(ids), math.exp(float(nll.double().mean())), tuple(predictions.tolist()))


def _negative_log_likelihoods(logits: torch.Tensor, targets: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """Per position, in float32, a few rows at a time (a full float32 copy of the logits is not kept)."""
    import torch

    parts = [torch.nn.functional.cross_entropy(logits[i:i + rows].float(), targets[i:i + rows], reduction="none")
             for i in range(0, len(targets), rows)]
    return torch.cat(parts)


def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int,
             cancel: threading.Event | None = None) -> Iterator[str]:
    """Greedy generation (transformers' ``generate``, on a helper thread joined before this returns):
    yields the text generated so far after each token; an end token stops it."""
    import torch
    import transformers

    stop = threading.Event()
    tokens: queue.Queue[int | BaseException | None] = queue.Queue()
    ids = torch.tensor([_prompt_ids(tokenizer, prompt)], device=next(model.parameters()).device)

    def run() -> None:
        try:
            with torch.inference_mode(), quiet_transformers(transformers):
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, streamer=_TokenQueue(tokens), pad_token_id=_pad_token(tokenizer),
                               stopping_criteria=[_StopWhenSet(stop, cancel)])
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread and raised there
            tokens.put(exc)
        tokens.put(None)

    worker = threading.Thread(target=run, name="generate", daemon=True)
    worker.start()
    new: list[int] = []
    try:
        while (item := tokens.get()) is not None:
            if isinstance(item, BaseException):
                raise UserError(f"generation failed: {first_line(item)}")
            new.append(item)
            yield tokenizer.decode(new, skip_special_tokens=True)
    finally:
        stop.set()
        worker.join()
    if cancel is not None and cancel.is_set():
        raise EvaluationCancelled("cancelled")


class _TokenQueue:
    """A transformers streamer that puts each generated token id on a queue (the prompt skipped)."""

    def __init__(self, tokens: queue.Queue[int | BaseException | None]) -> None:
        self.tokens, self.prompt_seen = tokens, False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.tokens.put(int(value.reshape(-1)[0]))
        self.prompt_seen = True

    def end(self) -> None:
        pass


class _StopWhenSet:
    """A stopping criterion: true once the reader left or the user cancelled."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        import torch

        stopped = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


def _pad_token(tokenizer: Any) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as a user turn of the chat template when there is one, else as plain text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise UserError("the prompt is empty once tokenized")
    return list(ids)


class _Steps:
    """Numbers progress steps and checks the cancel flag before each."""

    def __init__(self, steps: int, cancel: threading.Event | None) -> None:
        self.steps, self.done, self.cancel = steps, 0, cancel

    def next(self, message: str, step: int | None = None) -> EvaluationProgress:
        """The progress event of the next step (or of step ``step``)."""
        if self.cancel is not None and self.cancel.is_set():
            raise EvaluationCancelled("cancelled")
        self.done = min(self.steps, self.done + 1 if step is None else step)
        return EvaluationProgress(self.done, self.steps, message)


def _score_and_generate(folder: Path, text: str, options: EvaluationOptions, counter: _Steps
                        ) -> Generator[EvaluationProgress, None, tuple[TextScore, str | None]]:
    with loaded_model(folder, options.device) as (model, tokenizer):
        yield counter.next(f"scoring {folder.name}")
        score = score_text(model, tokenizer, folder, text, options.max_tokens)
        if options.prompt is None:
            return score, None
        start, generation = counter.done, ""
        for k, text_so_far in enumerate(generate(model, tokenizer, options.prompt, options.max_new_tokens,
                                                 counter.cancel), start=1):
            generation = text_so_far
            yield counter.next(f"generating with {folder.name}: {k} tokens", start + k)
        counter.done = start + options.max_new_tokens  # an end token may stop it early
    return score, generation
