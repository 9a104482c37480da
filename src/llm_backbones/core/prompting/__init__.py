"""Prompt formats (data, one table) and the one builder that renders them; Prismatic's class names
exported."""

from llm_backbones.core.prompting.builder import (
    Gemma2InstructPromptBuilder,
    Gemma2PurePromptBuilder,
    LLaMa2ChatPromptBuilder,
    Llama3InstructPromptBuilder,
    Llama3PurePromptBuilder,
    MistralInstructPromptBuilder,
    Phi35InstructPromptBuilder,
    PhiPromptBuilder,
    PromptBuilder,
    PromptBuilderFactory,
    PurePromptBuilder,
    Qwen25InstructPromptBuilder,
    Qwen25PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
    builder_for,
)
from llm_backbones.core.prompting.formats import (
    PROMPT_FORMATS,
    PromptFormat,
    get_prompt_format,
    register_prompt_format,
)

__all__ = [
    "PromptBuilder",
    "PromptBuilderFactory",
    "PromptFormat",
    "PROMPT_FORMATS",
    "builder_for",
    "get_prompt_format",
    "register_prompt_format",
    "PurePromptBuilder",
    "LLaMa2ChatPromptBuilder",
    "VicunaV15ChatPromptBuilder",
    "MistralInstructPromptBuilder",
    "PhiPromptBuilder",
    "Llama3PurePromptBuilder",
    "Llama3InstructPromptBuilder",
    "Qwen25PurePromptBuilder",
    "Qwen25InstructPromptBuilder",
    "Gemma2PurePromptBuilder",
    "Gemma2InstructPromptBuilder",
    "Phi35InstructPromptBuilder",
]
