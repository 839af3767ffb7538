"""GGUF export: transformers' GGUF loader reads the file back with the same logits and tokens.

Tiny donors from core.synthetic (Phi-3 from transformers, which synthetic does not write) get a
tokenizer llama.cpp can hold: a SentencePiece ``tokenizer.model`` or a byte-level BPE
``tokenizer.json``, both trained here on a few sentences in well under a second.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from merger_gui.cli import main  # noqa: E402
from merger_gui.core.errors import DonorError, UserError  # noqa: E402
from merger_gui.core.inspect import inspect_folder  # noqa: E402
from merger_gui.core.quantization import (  # noqa: E402
    gguf_export_bytes, gguf_export_tensor_type, parse_weight_format, weight_bytes,
)
from merger_gui.core.synthetic import DonorShape, write_donor  # noqa: E402
from merger_gui.engine.gguf_export import ExportCancelled, ExportDone, export_gguf  # noqa: E402
from merger_gui.engine.gguf_vocab import PRE_TOKENIZERS  # noqa: E402

VOCAB = 320
TEXT = ["The quick brown fox jumps over the lazy dog.", "Hello world, 1234 numbers and words!",
        "Merged models run in llama.cpp, Ollama and LM Studio."] * 20
SAMPLE = "The quick brown fox, 1234 hello! Ollama ünïcode"
IDS = torch.tensor([[5, 17, 33, 100, 250, 7, 8, 300]])


def spm_tokenizer(folder: Path, tokenizer_class: str = "LlamaTokenizer") -> None:
    """A byte-fallback BPE SentencePiece model of VOCAB pieces, as Llama-2 and Mistral use."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_writer=model, vocab_size=VOCAB, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": tokenizer_class, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True}))


def bpe_tokenizer(folder: Path, pre: str) -> None:
    """A byte-level BPE tokenizer.json splitting text like ``pre`` (llama-bpe or qwen2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    split = next(regex for regex, name in PRE_TOKENIZERS.items() if name == pre)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, special_tokens=["<|begin|>", "<|end|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXT, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin|>", "eos_token": "<|end|>"}))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"bos_token_id": 0, "eos_token_id": 1}))


def phi3_donor(folder: Path) -> Path:
    config = transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=512,
        pad_token_id=None, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.Phi3ForCausalLM(config).to(torch.float16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def donors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """llama (Llama-3 BPE), mistral (SentencePiece), qwen2 (Qwen2 BPE, q/k/v biases), gemma, phi3."""
    root = tmp_path_factory.mktemp("donors")
    folders = {}
    for family in ("llama", "mistral", "qwen2", "gemma"):
        folder = write_donor(root / f"tiny-{family}-merge", DonorShape(family=family, vocab_size=VOCAB))
        if family in ("llama", "qwen2"):
            bpe_tokenizer(folder, "llama-bpe" if family == "llama" else "qwen2")
        else:
            spm_tokenizer(folder, "GemmaTokenizer" if family == "gemma" else "LlamaTokenizer")
        folders[family] = folder
    folders["phi3"] = phi3_donor(root / "tiny-phi3-merge")
    spm_tokenizer(folders["phi3"])
    return folders


def export(model: Path, out: Path, export_type: str, **kwargs: object) -> ExportDone:
    events = list(export_gguf(model, out, export_type, **kwargs))
    assert isinstance(events[-1], ExportDone)
    return events[-1]


def logits(folder: Path, gguf_file: str | None = None, quantised: str | None = None) -> torch.Tensor:
    """Logits for IDS: of the safetensors model (its weights through ``quantised`` and back), or the GGUF file."""
    # transformers gives a Phi-3 GGUF Phi3Config's pad id 32000, outside a tiny vocabulary: use none.
    extra = {"pad_token_id": None} if gguf_file else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32, **extra)
    if quantised is not None:
        tied = not any(n.endswith("lm_head.weight") for n in _stored_names(folder))
        with torch.no_grad():
            for name, param in model.named_parameters():
                kind = gguf.GGMLQuantizationType[gguf_export_tensor_type(name, tuple(param.shape), quantised, tied)]
                stored = param.detach().numpy().astype(np.float16)  # what the donor's f16 file holds
                param.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(stored, kind), kind)))
    with torch.no_grad():
        return model(IDS).logits


def _stored_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi3"])
def test_f16_export_gives_transformers_the_same_logits(donors: dict[str, Path], tmp_path: Path, family: str) -> None:
    # The donors are f16: f16 stores every matrix as is and norms widened to f32, so nothing is rounded.
    export(donors[family], tmp_path / "m.gguf", "f16")
    assert torch.allclose(logits(tmp_path, "m.gguf"), logits(donors[family]), atol=1e-5)


@pytest.mark.parametrize("export_type", ["bf16", "q8_0", "q4_0"])
def test_rounded_exports_are_the_model_with_rounded_weights(donors: dict[str, Path], tmp_path: Path,
                                                           export_type: str) -> None:
    """The only difference from the safetensors model is the rounding of the weights.

    Against the model whose weights went through gguf-py's own quantiser and back, logits agree
    to float tolerance. Against the original they differ by the rounding: relative L2 error of
    the logits at most 1 % for bf16 (8 mantissa bits: 2^-9 relative per weight), 3 % for q8_0
    (per block of 32 an 8-bit step of max|w|/127, about 0.5 % of a Gaussian weight's RMS, over
    the 4 layers' 7 matrices, embeddings and head) and 40 % for q4_0 (a 4-bit step of max|w|/8,
    about 8 % per matrix compounding through random, untrained layers that amplify it).
    """
    export(donors["llama"], tmp_path / "m.gguf", export_type)
    written = logits(tmp_path, "m.gguf")
    assert torch.allclose(written, logits(donors["llama"], quantised=export_type), atol=1e-4)
    bound = {"bf16": 0.01, "q8_0": 0.03, "q4_0": 0.40}[export_type]
    assert relative_error(logits(donors["llama"]), written) < bound


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3"])
def test_tokenizer_round_trips_text(donors: dict[str, Path], tmp_path: Path, family: str) -> None:
    export(donors[family], tmp_path / "m.gguf", "q8_0")
    original = transformers.AutoTokenizer.from_pretrained(donors[family])
    restored = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    ids = restored(SAMPLE).input_ids
    assert ids == original(SAMPLE).input_ids
    assert restored.decode(ids, skip_special_tokens=True) == SAMPLE


@pytest.mark.parametrize("export_type", ["f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "phi3"])
def test_estimate_equals_the_tensor_bytes_written(donors: dict[str, Path], tmp_path: Path, family: str,
                                                  export_type: str) -> None:
    export(donors[family], tmp_path / "m.gguf", export_type)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    model = inspect_folder(donors[family])
    assert sum(int(t.n_bytes) for t in reader.tensors) == gguf_export_bytes(model, export_type)
    if export_type in ("q8_0", "q4_0"):  # the estimator's GGUF figure for these types is the same number
        assert weight_bytes(model, parse_weight_format(export_type.upper())) == gguf_export_bytes(model, export_type)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == export_type.upper()


def test_gemma_norms_are_stored_as_one_plus_w_and_the_head_stays_tied(donors: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    # transformers' loader has no Gemma (v1) GGUF support: read the file directly.
    export(donors["gemma"], tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    from safetensors.numpy import load_file

    source = load_file(str(donors["gemma"] / "model.safetensors"))
    norm = source["model.layers.1.input_layernorm.weight"].astype(np.float32)
    np.testing.assert_array_equal(tensors["blk.1.attn_norm.weight"], norm + 1)
    np.testing.assert_array_equal(tensors["token_embd.weight"], source["model.embed_tokens.weight"])
    assert "output.weight" not in tensors
    assert reader.fields["general.architecture"].contents() == "gemma"
    assert reader.fields["tokenizer.ggml.add_space_prefix"].contents() is False


def test_llama3_rope_scaling_adds_the_factors_transformers_applies(donors: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "llama31"
    folder.mkdir()
    for file in donors["llama"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    config = json.loads((folder / "config.json").read_text()) | {"rope_scaling": scaling}
    (folder / "config.json").write_text(json.dumps(config))
    export(folder, tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    factors = next(np.array(t.data) for t in reader.tensors if t.name == "rope_freqs.weight")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers.AutoConfig.from_pretrained(folder)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    plain = 1.0 / 10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    np.testing.assert_allclose(factors, (plain / scaled).numpy(), rtol=1e-5)


def test_unsupported_tokenizer_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    donor = write_donor(tmp_path / "wordlevel", DonorShape())  # synthetic's WordLevel tokenizer.json
    with pytest.raises(DonorError, match="WordLevel tokenizer"):
        export(donor, tmp_path / "out" / "m.gguf", "f16")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_refused_in_one_line(donors: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "neox"
    folder.mkdir()
    for file in donors["llama"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "config.json").read_text()) | {"architectures": ["GPTNeoXForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DonorError, match="does not support GPTNeoXForCausalLM") as error:
        export(folder, tmp_path / "m.gguf", "f16")
    assert "\n" not in str(error.value) and not (tmp_path / "m.gguf").exists()


def test_existing_file_is_kept_without_overwrite_and_replaced_with_it(donors: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"GGUF old")  # a previous export
    with pytest.raises(UserError, match="already exists"):
        export(donors["llama"], out, "q8_0")
    assert out.read_bytes() == b"GGUF old"
    export(donors["llama"], out, "q8_0", overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_size > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_overwrite_replaces_only_a_previous_export(donors: dict[str, Path], tmp_path: Path) -> None:
    """--overwrite onto the recipe, the model's own weights or a FIFO is refused, each left as it was."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("merge_method: linear\n")
    weights = donors["llama"] / "model.safetensors"
    before = weights.read_bytes()
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    for target, why in ((recipe, "not a GGUF file"), (weights, "not a GGUF file"), (fifo, "not a regular file")):
        with pytest.raises(UserError, match=why) as error:
            export(donors["llama"], target, "f16", overwrite=True)
        assert "\n" not in str(error.value)
    assert recipe.read_text() == "merge_method: linear\n" and weights.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.gguf", "recipe.yaml"]


def test_cancel_between_tensors_leaves_nothing(donors: dict[str, Path], tmp_path: Path) -> None:
    cancel = threading.Event()
    events = export_gguf(donors["llama"], tmp_path / "m.gguf", "q4_0", cancel=cancel)
    first = next(events)
    assert first.index == 1 and first.bytes_written > 0
    cancel.set()
    with pytest.raises(ExportCancelled):
        list(events)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_with_json_and_refuses_in_one_line(donors: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(donors["qwen2"]), str(out), "--type", "q8_0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tensor_bytes"] == gguf_export_bytes(inspect_folder(donors["qwen2"]), "q8_0")
    assert result["file_bytes"] == out.stat().st_size
    assert main(["export-gguf", str(donors["qwen2"]), str(out)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_merge_tab_row_exports_with_the_predicted_size(donors: dict[str, Path], tmp_path: Path, qtbot) -> None:
    from merger_gui.core.units import format_size
    from merger_gui.qt.gguf_export_row import GGUFExportRow

    folder = tmp_path / "merged"
    folder.mkdir()
    for file in donors["llama"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    row = GGUFExportRow()
    qtbot.addWidget(row)
    row.set_model_folder(folder)
    row.type_combo.setCurrentText("q4_0")
    predicted = gguf_export_bytes(inspect_folder(folder), "q4_0")
    assert row.size_label.text() == f"≈ {format_size(predicted)}"
    with qtbot.waitSignal(row.exported, timeout=60_000) as blocker:
        assert row.start_export()
    assert blocker.args[0] == tmp_path / "merged-q4_0.gguf" and row.result_path == blocker.args[0]
    assert str(blocker.args[0]) in row.result_label.text()
    qtbot.waitUntil(lambda: not row.is_running)
    reader = gguf.GGUFReader(blocker.args[0])
    assert sum(int(t.n_bytes) for t in reader.tensors) == predicted


def test_merge_tab_row_cancel_leaves_nothing(donors: dict[str, Path], tmp_path: Path, qtbot, monkeypatch) -> None:
    from merger_gui.engine import gguf_export
    from merger_gui.engine.gguf_events import ExportProgress
    from merger_gui.qt.gguf_export_row import GGUFExportRow

    real_export = gguf_export.export_gguf

    def paused_export(*args, cancel, **kwargs):
        for event in real_export(*args, cancel=cancel, **kwargs):
            yield event
            if isinstance(event, ExportProgress):
                assert cancel.wait(30)  # hold until the row's cancel lands: tiny donors finish fast

    monkeypatch.setattr(gguf_export, "export_gguf", paused_export)
    row = GGUFExportRow()
    qtbot.addWidget(row)
    row.set_model_folder(donors["llama"])
    row.runner.progress.connect(lambda event: row.cancel() if isinstance(event, ExportProgress) else None)
    with qtbot.waitSignal(row.runner.cancelled, timeout=60_000):
        assert row.start_export()
    assert row.result_label.text() == "Export cancelled; nothing was written"
    assert not row.output_file().exists() and row.export_button.isEnabled()
    assert [p.name for p in row.output_file().parent.iterdir() if p.name.startswith(".")] == []


def test_a_missing_model_folder_is_called_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    for model, what in (("missing", "does not exist"), ("file", "is not a folder")):
        assert main(["export-gguf", str(tmp_path / model), str(tmp_path / "m.gguf")]) == 1
        err = capsys.readouterr().err
        assert err == f"error: model folder {tmp_path / model} {what}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_folders_above_the_file_are_created_as_merge_does_and_removed_on_failure(
        donors: dict[str, Path], tmp_path: Path) -> None:
    cancel = threading.Event()
    events = export_gguf(donors["llama"], tmp_path / "new" / "deeper" / "m.gguf", "q8_0", cancel=cancel)
    next(events)
    cancel.set()
    with pytest.raises(ExportCancelled):
        list(events)
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone too
    (tmp_path / "kept").mkdir()
    done = export(donors["llama"], tmp_path / "kept" / "new" / "m.gguf", "q8_0")
    assert done.path == tmp_path / "kept" / "new" / "m.gguf" and done.path.is_file()


@pytest.mark.parametrize("out, why", [("file/m.gguf", "file is not a folder"),
                                      ("file/sub/m.gguf", "file is not a folder"),
                                      ("dead/m.gguf", "dead is a link to nothing")])
def test_a_path_through_a_file_or_a_dead_link_is_refused_in_one_line(
        donors: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, why: str) -> None:
    (tmp_path / "file").write_text("mine")
    (tmp_path / "dead").symlink_to(tmp_path / "nowhere")
    assert main(["export-gguf", str(donors["llama"]), str(tmp_path / out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot create {tmp_path / out}: {tmp_path / why}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dead", "file"] and (tmp_path / "file").read_text() == "mine"


def test_a_linked_out_file_is_replaced_never_written_through(donors: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.gguf").write_bytes(b"GGUF someone else's")
    link = tmp_path / "m.gguf"
    link.symlink_to(elsewhere / "m.gguf")
    with pytest.raises(UserError, match="already exists"):
        export(donors["llama"], link, "q8_0")
    export(donors["llama"], link, "q8_0", overwrite=True)
    assert not link.is_symlink() and link.read_bytes()[:4] == b"GGUF" and link.stat().st_size > 100
    assert (elsewhere / "m.gguf").read_bytes() == b"GGUF someone else's"
