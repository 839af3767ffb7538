"""The recipe's ``chat_template``: a template name, a literal Jinja template, or ``auto``.

As in mergekit, a short single-line value without ``{`` names a built-in template
(chatml, llama3, alpaca, mistral, exaone); ``auto`` takes the template most donors
share (ties go to the base, then to the first model); anything else must be a Jinja
template. The output gets it as ``chat_template.jinja`` (what transformers 5 writes and
reads first) and as the ``chat_template`` key of ``tokenizer_config.json`` (what older
transformers read); a donor's ``chat_template.json`` is dropped so nothing contradicts it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.safe_files import TOKENIZER_LIMIT, is_present, parse_json, read_json_file, read_small_file

JINJA_FILE = "chat_template.jinja"
JSON_FILE = "chat_template.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
AUTO = "auto"

# Our own templates of the common formats. They render like mergekit's of the same name, except for
# the stray whitespace between turns of mergekit's llama3 (a newline) and exaone (indentation).
NAMED_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}"
        "{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% set system = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{{ (system | last).content | trim if system else '' }}{{ '\\n\\n' }}"
        "{% set headers = {'user': '### Instruction:\\n', 'assistant': '### Response:\\n',"
        " 'user_context': '### Input:\\n'} %}"
        "{% for message in messages %}"
        "{% if message['role'] in headers %}"
        "{{ headers[message['role']] + message['content'] | trim }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "mistral": (
        "{% set offset = 1 if messages and messages[0]['role'] == 'system' else 0 %}"
        "{{ bos_token }}"
        "{% for message in messages[offset:] %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('after an optional system message, roles must alternate user/assistant') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ ' [INST] ' + (messages[0]['content'] + '\\n\\n' if offset and loop.first else '')"
        " + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('only user and assistant roles may follow the system message') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    "exaone": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{% endif %}"
        "{{ '[|' + message['role'] + '|]' + message['content'] }}"
        "{{ '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
}


def check_chat_template(value: str | None) -> None:
    """Refuse a ``chat_template`` that is neither ``auto``, a known name nor a Jinja template.

    Raises:
        UserError: with the known names.
    """
    if value and value != AUTO:
        resolve_chat_template(value, ())


def resolve_chat_template(value: str | None, donor_folders: Sequence[Path]) -> str | None:
    """The Jinja text of ``value``; None when there is none (no value, or ``auto`` and no donor has one).

    Args:
        value: The recipe's ``chat_template``.
        donor_folders: The stage's model folders, base first, for ``auto``.

    Raises:
        UserError: an unknown template name or a value too short to be a template.
    """
    if not value:
        return None
    if value == AUTO:
        templates = [t.strip() for t in map(donor_chat_template, donor_folders) if t and t.strip()]
        # Counter keeps first-seen order among equal counts.
        return Counter(templates).most_common(1)[0][0] if templates else None
    if len(value) < 256 and "\n" not in value and "{" not in value and value in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[value]
    if len(value) < 20 or "{" not in value:
        raise UserError(f"unknown chat_template {value!r}: use auto, one of {', '.join(NAMED_TEMPLATES)} "
                        "or a Jinja template")
    return value


def donor_chat_template(folder: Path) -> str | None:
    """The chat template a model folder ships, read like transformers does; None when it has none."""
    folder = Path(folder)
    if is_present(folder / JINJA_FILE):
        raw = read_small_file(folder / JINJA_FILE, TOKENIZER_LIMIT, "chat template")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DonorError(f"{folder / JINJA_FILE} is not UTF-8 text") from None
    for name in (TOKENIZER_CONFIG, JSON_FILE):
        if not is_present(folder / name):
            continue
        raw = read_small_file(folder / name, TOKENIZER_LIMIT, name)  # a link out of the folder is an error
        try:
            data = parse_json(raw, str(folder / name))
        except DonorError:
            continue  # unreadable JSON: transformers would fail too, and the template is optional
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = {t.get("name"): t.get("template") for t in template
                        if isinstance(t, dict) and isinstance(t.get("name"), str)}
        if isinstance(template, dict):
            template = template.get("default")
        if isinstance(template, str):
            return template
    return None


def write_chat_template(folder: Path, template: str) -> None:
    """Give the tokenizer in ``folder`` the chat template ``template``."""
    (folder / JINJA_FILE).write_text(template, encoding="utf-8")
    (folder / JSON_FILE).unlink(missing_ok=True)
    config_file = folder / TOKENIZER_CONFIG
    if config_file.is_file():
        config = read_json_file(config_file, TOKENIZER_LIMIT, TOKENIZER_CONFIG)
        if not isinstance(config, dict):
            raise DonorError(f"{config_file} is not a JSON object")
        config["chat_template"] = template
        config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
