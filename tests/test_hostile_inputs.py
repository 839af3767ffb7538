"""Hostile inputs: recipes, donor configs, indexes, safetensors headers, links and special files.

Each attack is answered with one clean line (no traceback), within a few seconds and a few
hundred MB, and leaves the files beside it untouched. The CLI cases run in a child process
whose memory is capped (RLIMIT_AS) and measured (its peak RSS from ``wait4``), so a
regression fails here instead of exhausting the machine; property tests (hypothesis) throw
random documents at the parsers in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merger_gui.core.curves import layers_from_ranges
from merger_gui.core.donor import MAX_LAYERS
from merger_gui.core.errors import DonorError, RecipeError
from merger_gui.core.inspect import donor_from_config, inspect_folder
from merger_gui.core.plan import plan_recipe
from merger_gui.core.recipe_yaml import MAX_RECIPE_BYTES, load_recipe_text, read_recipe_text
from merger_gui.core.safe_files import MAX_JSON_CONTAINERS, MAX_JSON_ITEMS, donor_file, parse_json
from merger_gui.core.safetensors_header import MAX_TENSORS, parse_safetensors_header
from merger_gui.core.synthetic import DonorShape, write_donor
from merger_gui.core.tokenizer_vocab import read_tokenizer_vocabulary

MIB = 1024 * 1024
SECONDS = 10  # the bound per attack, CLI start-up included, on a busy CI machine
RSS_MB = 400  # peak resident memory of a CLI run that does not merge
ADDRESS_SPACE = 3 * 1024 * MIB  # a runaway child fails fast instead of eating the machine


# --------------------------------------------------------------------------- harness


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float


# Runs the CLI under an address-space cap and records its peak RSS at exit. The peak is read
# from /proc (VmHWM of the process' own memory): ru_maxrss would count the pytest process the
# child was forked from.
CHILD = """
import atexit, resource, runpy, sys
limit, report = int(sys.argv[1]), sys.argv[2]
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

def record():
    try:
        status = open("/proc/self/status").read()
        kb = int(status.split("VmHWM:")[1].split()[0])
    except (OSError, IndexError):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    open(report, "w").write(str(kb))

atexit.register(record)
sys.argv = ["merger-gui", *sys.argv[3:]]
runpy.run_module("merger_gui", run_name="__main__", alter_sys=True)
"""


def run_cli(*args: str | Path, cwd: Path, address_space: int | None = ADDRESS_SPACE, timeout: float = 60) -> Run:
    """``python -m merger_gui ARGS`` with capped memory; its time and peak RSS measured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "rss"
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, str(address_space or 0), str(report), *map(str, args)],
                                  cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"merger-gui {' '.join(map(str, args))} ran past {timeout} s")
        seconds = time.monotonic() - start
        rss_mb = int(report.read_text()) / 1024 if report.exists() else float("inf")
    return Run(done.returncode, done.stdout, done.stderr, seconds, rss_mb)


def assert_clean_refusal(run: Run, expected: str, rss_mb: float = RSS_MB) -> None:
    """Exit 1, no traceback, every error on one line mentioning ``expected``; fast and small."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    errors = [line for line in (run.stderr + run.stdout).splitlines() if line.startswith("error")]
    assert errors and any(expected in line for line in errors), run.stdout[-2000:] + run.stderr[-2000:]
    assert run.seconds < SECONDS, f"took {run.seconds:.1f} s"
    assert run.rss_mb < rss_mb, f"peak RSS {run.rss_mb:.0f} MB"


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: kind, link target, size, mtime and content hash (regular files)."""
    state: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            info = path.lstat()
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path))
            elif path.is_file():
                state[str(path)] = ("file", info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).digest())
            else:
                state[str(path)] = ("other", info.st_mode)
    return state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_donor(tmp_path_factory.mktemp("pristine") / "donor", DonorShape(num_layers=4))


@pytest.fixture
def donor(pristine, tmp_path) -> Path:
    """A fresh copy of a small valid donor, free to be damaged."""
    return Path(shutil.copytree(pristine, tmp_path / "donor"))


def passthrough_recipe(model: Path | str, layer_range: str = "[0, 4]") -> str:
    return f"merge_method: passthrough\nslices:\n  - sources: [{{model: '{model}', layer_range: {layer_range}}}]\n"


def _safetensors(path: Path, header: bytes | dict, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# --------------------------------------------------------------------------- recipes

BOMB = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    + ["merge_method: passthrough", "slices: []", ""]
)

# name → (recipe text, or a function of the donor folder giving it; text the error must contain)
RECIPES: dict[str, tuple[str | Callable[[Path], str], str]] = {
    "alias_bomb": (BOMB, "more than 20,000 values"),
    "alias_bomb_in_parameters": ("x: &x [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                                 + "".join(f"x{i}: &x{i} [{', '.join(['*x' + ('' if i == 0 else str(i - 1))] * 10)}]\n"
                                           for i in range(7))
                                 + "merge_method: linear\nmodels: [{model: a, parameters: {weight: *x6}}]\n",
                                 "more than 20,000 values"),
    "recursive_alias": ("merge_method: linear\nx: &x [*x]\nmodels: [{model: a}]\n", "cycle"),
    "huge_t_list": (lambda d: passthrough_recipe(d) + "parameters: {t: [" + ", ".join(["0.5"] * 30000) + "]}\n",
                    "more than 20,000 values"),
    "over_size_cap": ("merge_method: linear\n# " + "x" * (MAX_RECIPE_BYTES + 10) + "\n", "larger than"),
    "deep_flow": ("merge_method: linear\nx: " + "[" * 50000 + "]" * 50000 + "\n", "nest more than 50 levels"),
    "deep_block": ("merge_method: linear\nx:\n" + "".join(" " * i + "k:\n" for i in range(1, 200)), "nest more than"),
    "deep_mapping_flow": ("merge_method: linear\nx: " + "{a: " * 5000 + "\n", "nest more than"),
    "long_integer": ("merge_method: linear\nmodels: [{model: a}]\nparameters: {weight: " + "9" * 5000 + "}\n",
                     "integer of 5,000 digits"),
    "long_integer_in_unknown_key": ("merge_method: linear\nmodels: [{model: a}]\nnote: -" + "7" * 5000 + "\n",
                                    "integer of 5,000 digits"),
    "long_layer_range": (lambda d: passthrough_recipe(d, "[0, " + "9" * 4400 + "]"), "integer of 4,400 digits"),
    "bad_float_tag": ("merge_method: linear\nmodels: [{model: a}]\nparameters: {weight: !!float \"abc\"}\n",
                      "cannot read 'abc' as float"),
    "bad_int_tag": ("merge_method: linear\nmodels: [{model: a}]\nparameters: {weight: !!int \"1.5x\"}\n",
                    "cannot read '1.5x' as int"),
    "bad_timestamp": ("merge_method: linear\nmodels: [{model: a}]\nwhen: !!timestamp 2024-99-99\n", "timestamp"),
    "not_utf8": ("", "not UTF-8"),  # written as bytes below
    "nul_byte": ("", "line 2: invalid YAML: unacceptable character #x0000"),  # written as bytes below
    "bell_character": ("merge_method: linear\n\x07\n", "line 2: invalid YAML: unacceptable character #x0007"),
}


def _write_recipe(name: str, folder: Path, donor: Path) -> Path:
    text, _ = RECIPES[name]
    recipe = folder / "recipe.yaml"
    if name == "not_utf8":
        recipe.write_bytes(b"merge_method: linear\nmodels: [{model: \xff\xfe}]\n")
    elif name == "nul_byte":
        recipe.write_bytes(b"merge_method: linear\n\x00\x01\x02binary")
    else:
        recipe.write_text(text(donor) if callable(text) else text)
    return recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_hostile_recipe_is_one_line_fast_and_small(name, donor, tmp_path):
    recipe = _write_recipe(name, tmp_path, donor)
    before = snapshot(tmp_path)
    command = {"deep_flow": "plan", "huge_t_list": "estimate", "alias_bomb": "validate"}.get(name, "validate")
    assert_clean_refusal(run_cli(command, recipe, cwd=tmp_path), RECIPES[name][1])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_hostile_recipe_raises_recipe_error_in_process(name, donor, tmp_path):
    text = _write_recipe(name, tmp_path, donor).read_bytes().decode("utf-8", errors="replace")
    if name == "not_utf8":
        pytest.skip("decoding is the file reader's job")
    start = time.monotonic()
    with pytest.raises(RecipeError) as caught:
        load_recipe_text(text)
    assert time.monotonic() - start < SECONDS / 2
    assert "\n" not in str(caught.value)


def test_merge_key_supplying_a_mapping_is_read():
    recipe = load_recipe_text("merge_method: linear\nmodels:\n  - <<: {model: a}\n    parameters: {weight: 1}\n"
                              "parameters:\n  <<: {normalize: true}\n  int8_mask: false\n")
    stage = recipe.stages[0]
    assert stage.models[0].model == "a" and stage.parameters["normalize"] is True


def test_aliases_within_the_bounds_still_work():
    recipe = load_recipe_text("w: &w {weight: 0.5}\nmerge_method: linear\n"
                              "models: [{model: a, parameters: *w}, {model: b, parameters: *w}]\n")
    assert [m.parameters["weight"] for m in recipe.stages[0].models] == [0.5, 0.5]


def test_python_tags_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = f"merge_method: linear\nmodels: [{{model: a}}]\nx: !!python/object/apply:os.system ['touch {marker}']\n"
    with contextlib.suppress(RecipeError):
        load_recipe_text(text)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "folder"])
def test_recipe_that_is_no_regular_file(target, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    if target == "fifo":
        os.mkfifo(recipe)
    elif target == "folder":
        recipe.mkdir()
    else:
        recipe.symlink_to(target)
    assert_clean_refusal(run_cli("validate", recipe, cwd=tmp_path), "not a")


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom", "large"])
def test_reading_a_recipe_never_blocks_or_reads_without_end(target, tmp_path):
    """What the designer's Open uses (the CLI refuses special files before reading)."""
    recipe = tmp_path / "recipe.yaml"
    if target == "fifo":
        os.mkfifo(recipe)
    elif target == "large":
        recipe.write_text("# " + "x" * MAX_RECIPE_BYTES)
    else:
        recipe.symlink_to(target)
    with pytest.raises(RecipeError, match="not a regular file|larger than"):
        read_recipe_text(recipe)


@pytest.mark.parametrize("layer_range", ["[0, 1000000000]", "[-1000000000, -1]", "[-1000000000, 2]",
                                         "[3, 100000000000000000000000000000]"])
@pytest.mark.parametrize("command", ["validate", "plan", "estimate"])
def test_absurd_layer_range_is_reported_not_enumerated(layer_range, command, donor, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(passthrough_recipe(donor, layer_range))
    assert_clean_refusal(run_cli(command, recipe, cwd=tmp_path), "layer_range")


def test_plan_of_an_absurd_range_keeps_the_layers_that_exist(donor):
    recipe = load_recipe_text(passthrough_recipe(donor, "[2, 1000000000000]"))
    start = time.monotonic()
    plan = plan_recipe(recipe, {str(donor): inspect_folder(donor)})
    assert time.monotonic() - start < 1
    assert [layer.sources[0].layer for layer in plan.final.layers] == [2, 3]


def test_curve_layers_of_an_absurd_range_without_donors_are_bounded():
    recipe = load_recipe_text(passthrough_recipe("not-inspected-yet", "[0, 1000000000]"))
    start = time.monotonic()
    assert len(layers_from_ranges(recipe.stages[0])) == MAX_LAYERS
    assert time.monotonic() - start < 1


# --------------------------------------------------------------------------- donor files


def _config(donor: Path, **changes) -> None:
    file = donor / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def _raw_config(text: str) -> Callable[[Path], None]:
    return lambda donor: (donor / "config.json").write_text(text)


def _replace(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(donor: Path) -> None:
        (donor / name).unlink()
        make(donor / name)
    return damage


def _index(weight_map_text: str) -> Callable[[Path], None]:
    def damage(donor: Path) -> None:
        (donor / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": ' + weight_map_text + "}")
    return damage


def _header(header: bytes | Callable[[], dict]) -> Callable[[Path], None]:
    def damage(donor: Path) -> None:
        _safetensors(donor / "model.safetensors", header if isinstance(header, bytes) else header())
    return damage


def _zero_size_tensors() -> dict:
    """One tensor more than a file may hold, every one empty (a 5 MB header)."""
    return {f"t.{i}": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)}

# name → (damage done to a valid donor, text the error must contain)
DONORS: dict[str, tuple[Callable[[Path], None], str]] = {
    "config_link_to_dev_zero": (_replace("config.json", lambda p: p.symlink_to("/dev/zero")), "outside the donor"),
    "config_link_to_urandom": (_replace("config.json", lambda p: p.symlink_to("/dev/urandom")), "outside the donor"),
    "config_fifo": (_replace("config.json", os.mkfifo), "FIFO"),
    "config_folder": (_replace("config.json", os.mkdir), "a folder"),
    "config_broken_link": (_replace("config.json", lambda p: p.symlink_to(p.parent / "nowhere")), "broken link"),
    "config_link_loop": (_replace("config.json", lambda p: p.symlink_to(p)), "config.json"),
    "config_too_large": (_raw_config("{" + " " * (5 * MIB) + "}"), "more than the"),
    "config_nested": (_raw_config("[" * 100000 + "]" * 100000), "nests deeper"),
    "config_nested_below_recursion_limit": (_raw_config('{"a": ' * 900 + "1" + "}" * 900), "nests deeper"),
    "config_long_integer": (_raw_config('{"num_hidden_layers": ' + "9" * 5000 + "}"), "5000 digits"),
    "config_not_utf8": (lambda d: (d / "config.json").write_bytes(b'{"a": "\xff"}') and None, "not UTF-8"),
    "config_head_dim_text": (lambda d: _config(d, head_dim="x"), "invalid head_dim: 'x'"),
    "config_huge_layer_count": (lambda d: _config(d, num_hidden_layers=10**12), "invalid num_hidden_layers"),
    "config_negative_kv_heads": (lambda d: _config(d, num_key_value_heads=-2), "invalid num_key_value_heads: -2"),
    "config_negative_head_dim": (lambda d: _config(d, head_dim=-64), "invalid head_dim: -64"),
    "config_float_hidden_size": (lambda d: _config(d, hidden_size=64.5), "invalid hidden_size"),
    "config_bool_vocab": (lambda d: _config(d, vocab_size=True), "invalid vocab_size"),
    "weights_link_to_dev_zero": (_replace("model.safetensors", lambda p: p.symlink_to("/dev/zero")),
                                 "character device"),
    "weights_fifo": (_replace("model.safetensors", os.mkfifo), "FIFO"),
    "header_too_many_tensors": (_header(_zero_size_tensors), f"more than {MAX_TENSORS:,} tensors"),
    "header_long_integer": (_header(b'{"t": {"dtype": "F16", "shape": [' + b"9" * 5000
                                    + b'], "data_offsets": [0, 0]}}'), "5000 digits"),
    "header_nested_metadata": (_header(b'{"__metadata__": ' + b"[" * 100000 + b"]" * 100000 + b"}"), "nests deeper"),
    "header_length_huge": (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}"),
                           "exceeds"),
    "index_fifo": (lambda d: os.mkfifo(d / "model.safetensors.index.json"), "FIFO"),
    "index_link_to_passwd": (lambda d: (d / "model.safetensors.index.json").symlink_to("/etc/passwd"),
                             "outside the donor"),
    "index_long_integer": (_index('{"a": ' + "1" * 5000 + "}"), "5000 digits"),
    "index_nested": (_index("[" * 100000 + "]" * 100000), "nests deeper"),
    "index_traversal": (_index('{"t": "../../etc/passwd.safetensors"}'), "outside its folder"),
    "index_absolute": (_index('{"t": "/etc/passwd"}'), "outside its folder"),
}


@pytest.mark.parametrize("name", sorted(DONORS))
def test_hostile_donor_is_one_line_fast_and_small(name, donor, tmp_path):
    damage, expected = DONORS[name]
    damage(donor)
    before = snapshot(tmp_path)
    assert_clean_refusal(run_cli("estimate", donor, cwd=tmp_path), expected)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["config_link_to_dev_zero", "config_fifo", "config_huge_layer_count",
                                  "header_too_many_tensors", "index_nested"])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_hostile_donor_of_a_recipe(name, command, donor, tmp_path):
    DONORS[name][0](donor)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(passthrough_recipe(donor))
    assert_clean_refusal(run_cli(command, recipe, cwd=tmp_path), DONORS[name][1])


@pytest.mark.parametrize("name", sorted(DONORS))
def test_hostile_donor_raises_donor_error_in_process(name, donor):
    DONORS[name][0](donor)
    start = time.monotonic()
    with pytest.raises(DonorError) as caught:
        inspect_folder(donor)
    assert time.monotonic() - start < SECONDS / 2
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("raw", [b"[" + b"[]," * (MAX_JSON_CONTAINERS + 1) + b"[]]",
                                 b"[" + b"0," * (MAX_JSON_ITEMS + 1) + b"0]"])
def test_json_of_millions_of_values_is_refused_before_parsing(raw):
    start = time.monotonic()
    with pytest.raises(DonorError, match="far more than a real one"):
        parse_json(raw, "tokenizer.json", small_ints=False)
    assert time.monotonic() - start < 1


def test_tokenizer_with_an_absurd_token_id(donor):
    file = donor / "tokenizer.json"
    data = json.loads(file.read_text())
    data["added_tokens"][0]["id"] = 10**40
    file.write_text(json.dumps(data))
    with pytest.raises(DonorError, match="token id"):
        read_tokenizer_vocabulary(donor)


def test_config_of_an_absurd_size_is_refused_before_any_list_is_built():
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 96, "num_hidden_layers": 10**12}
    with pytest.raises(DonorError, match="num_hidden_layers"):
        donor_from_config("x", "folder", config, ())


# --------------------------------------------------------------------------- links and copies


def _merge_with_tokenizer_link(donor: Path, tmp_path: Path, target: Path | str) -> tuple[Run, Path]:
    (donor / "tokenizer.json").unlink()
    (donor / "tokenizer.json").symlink_to(target)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(passthrough_recipe(donor))
    out = tmp_path / "out"
    return run_cli("merge", recipe, out, cwd=tmp_path, address_space=None, timeout=120), out


def test_tokenizer_linked_outside_the_donor_is_never_copied(donor, tmp_path):
    run, out = _merge_with_tokenizer_link(donor, tmp_path, "/etc/passwd")
    assert_clean_refusal(run, "outside the donor", rss_mb=1500)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer.model", "chat_template.jinja", "generation_config.json"])
@pytest.mark.parametrize("command", ["validate", "estimate"])
def test_metadata_file_linked_outside_is_reported_before_merging(name, command, donor, tmp_path):
    (donor / name).unlink(missing_ok=True)
    (donor / name).symlink_to("/etc/passwd")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(passthrough_recipe(donor))
    assert_clean_refusal(run_cli(command, recipe, cwd=tmp_path), "outside the donor")


def test_tokenizer_linked_inside_the_donor_is_copied(donor, tmp_path):
    shutil.copy(donor / "tokenizer.json", donor / "real-tokenizer.json")
    run, out = _merge_with_tokenizer_link(donor, tmp_path, donor / "real-tokenizer.json")
    assert run.returncode == 0, run.stderr
    assert not (out / "tokenizer.json").is_symlink()
    assert (out / "tokenizer.json").read_bytes() == (donor / "real-tokenizer.json").read_bytes()


def test_hub_cache_links_into_blobs_are_followed(pristine, tmp_path):
    repo = tmp_path / "hub" / "models--org--name"
    snapshot_dir = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot_dir.mkdir(parents=True)
    for file in pristine.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.name.encode()).hexdigest()
        shutil.copy(file, blob)
        (snapshot_dir / file.name).symlink_to(os.path.relpath(blob, snapshot_dir))
    assert inspect_folder(snapshot_dir).num_layers == 4
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (snapshot_dir / "tokenizer_config.json").unlink()
    (snapshot_dir / "tokenizer_config.json").symlink_to(outside)
    with pytest.raises(DonorError, match="outside the donor"):
        donor_file(snapshot_dir / "tokenizer_config.json", snapshot_dir)


def test_donor_folder_given_as_a_link_is_fine(pristine, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(pristine)
    assert inspect_folder(link).num_layers == 4


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size", "sliding_window", "max_window_layers", "layer_types",
               "tie_word_embeddings", "torch_dtype", "text_config", "model_type", "use_sliding_window")
YAML_PIECES = st.sampled_from([
    "merge_method: linear\n", "models:\n", "  - model: a\n", "  - {model: b, parameters: {weight: 1}}\n",
    "slices:\n", "  - sources: [{model: a, layer_range: [0, 2]}]\n", "parameters:\n", "  t: [0, 0.5, 1]\n",
    "  weight: !!float 1e3\n", "&x ", "*x\n", "<<: *x\n", "<<: {model: c}\n", "- ", "[", "]", "{", "}", ": ", ", ",
    "---\n", "? ", "!!str ", "!!int ", "!!binary ", "\t", "'", '"', "#c\n", "99999999999999999999999999999999\n",
    "tokenizer: {source: union, tokens: {x: {source: {kind: zero}}}}\n", "layer_range: [-5, 1e9]\n",
])


@PROPERTY
@given(st.lists(YAML_PIECES, max_size=25).map("".join))
def test_any_recipe_text_loads_or_gives_one_line(text):
    try:
        load_recipe_text(text)
    except RecipeError as error:
        assert "\n" not in str(error)


@PROPERTY
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON_VALUES, max_size=8))
def test_any_config_values_give_a_donor_or_one_line(values):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 96, "num_hidden_layers": 2,
              "torch_dtype": "bfloat16", **values}
    try:
        info = donor_from_config("x", "folder", config, ())
    except DonorError as error:
        assert "\n" not in str(error)
        return
    assert 1 <= info.num_layers <= MAX_LAYERS and info.num_kv_heads >= 1 and info.head_dim >= 1


@PROPERTY
@given(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=6))
def test_any_safetensors_header_gives_tensors_or_one_line(header):
    raw = json.dumps(header).encode()
    try:
        parse_safetensors_header(raw, None, "f.safetensors")
    except DonorError as error:
        assert "\n" not in str(error)


@PROPERTY
@given(st.binary(max_size=200) | st.text(alphabet="[]{}:,\"0123456789e.-a ", max_size=200).map(str.encode))
def test_any_json_bytes_parse_or_give_one_line(raw):
    try:
        parse_json(raw, "config.json")
    except DonorError as error:
        assert "\n" not in str(error) and "config.json" in str(error)


def test_weights_kept_on_another_disk_may_be_linked(pristine, tmp_path):
    """Only tensor data a header describes is read from a weight file, so its link may lead anywhere."""
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    donor = tmp_path / "donor"
    shutil.copytree(pristine, donor)
    for shard in donor.glob("*.safetensors"):
        shutil.move(shard, elsewhere / shard.name)
        shard.symlink_to(elsewhere / shard.name)
    assert inspect_folder(donor).num_layers == 4
    (donor / "config.json").unlink()
    (donor / "config.json").symlink_to(elsewhere / "config.json")
    shutil.copy(pristine / "config.json", elsewhere / "config.json")
    with pytest.raises(DonorError, match="outside the donor"):
        inspect_folder(donor)


def test_local_dir_downloads_linking_into_a_hub_cache_are_followed(pristine, tmp_path):
    """``huggingface-cli download --local-dir`` (older versions) links each file into the cache's blobs."""
    blobs = tmp_path / "cache" / "models--org--name" / "blobs"
    blobs.mkdir(parents=True)
    donor = tmp_path / "local-dir"
    donor.mkdir()
    for file in pristine.iterdir():
        blob = blobs / hashlib.sha256(file.name.encode()).hexdigest()
        shutil.copy(file, blob)
        (donor / file.name).symlink_to(blob)
    assert inspect_folder(donor).num_layers == 4
    assert donor_file(donor / "tokenizer.json", donor).parent == blobs


# --------------------------------------------------------------------------- more CLI attacks


@pytest.mark.parametrize("parameters", ["{weight: 1e308}", "{weight: [1, -1e39]}", "{weight: [0, 1e300, 1]}"])
def test_a_parameter_beyond_float32_is_refused_not_merged_into_nan(parameters, donor, tmp_path):
    """float32 (the merge's arithmetic) turns 1e308 into inf, and the merged weights into NaN."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: ties\nbase_model: '{donor}'\nmodels: [{{model: '{donor}', "
                      f"parameters: {parameters}}}]\n")
    assert_clean_refusal(run_cli("merge", recipe, tmp_path / "out", cwd=tmp_path), "beyond float32's ±3.4e38")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "merge"])
def test_control_characters_in_names_are_shown_escaped_on_one_line(command, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(passthrough_recipe("a\\nb\\x1b[2J\\u202e").replace("'", '"'))  # YAML escapes
    run = run_cli(command, recipe, tmp_path / "out", cwd=tmp_path) if command == "merge" \
        else run_cli(command, recipe, cwd=tmp_path)
    assert_clean_refusal(run, "donor 'a\\nb\\x1b[2J\\u202e'")
    assert "\x1b" not in run.stdout + run.stderr and "\u202e" not in run.stdout + run.stderr
    assert len([line for line in (run.stdout + run.stderr).splitlines() if "a\\nb" in line]) == 1


@pytest.mark.parametrize("where", ["output", "intermediate"])
@pytest.mark.parametrize("blocker", ["file", "dead link"])
def test_a_folder_path_through_a_file_or_a_dead_link_is_refused_before_merging(where, blocker, donor, tmp_path):
    (tmp_path / "blocker").symlink_to(tmp_path / "nowhere") if blocker == "dead link" \
        else (tmp_path / "blocker").write_text("mine")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: first\n{passthrough_recipe(donor)}---\nname: final\n"
                      + passthrough_recipe("first").replace("'first'", "first"))
    before = snapshot(tmp_path)
    out, inter = ("blocker/sub/out", "inter") if where == "output" else ("out", "blocker/sub")
    run = run_cli("merge", recipe, out, "--intermediate-dir", inter, cwd=tmp_path)
    why = "a link to nothing" if blocker == "dead link" else "not a folder"
    assert_clean_refusal(run, f"{tmp_path / 'blocker'} is {why}")
    assert "merging" not in run.stderr and snapshot(tmp_path) == before


def test_a_donor_folder_that_is_a_link_loop_is_one_line(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(passthrough_recipe("a"))
    for args in (["validate", recipe], ["merge", recipe, "out"]):
        assert_clean_refusal(run_cli(*args, "--donor", f"a={tmp_path / 'loop1'}", cwd=tmp_path), "donor 'a'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--context", "--batch"])
def test_an_absurd_count_is_a_usage_error_not_absurd_figures(option, donor, tmp_path):
    run = run_cli("estimate", donor, option, "9" * 30, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "must be at most 2,147,483,648" in run.stderr
