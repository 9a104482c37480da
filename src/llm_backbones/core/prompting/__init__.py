"""Prompt formats (data) and the one builder that renders them; Prismatic's class names exported."""

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
    PurePromptBuilder,
    Qwen25InstructPromptBuilder,
    Qwen25PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from llm_backbones.core.prompting.formats import OFFICIAL_FORMATS, PRISMATIC_FORMATS, PromptFormat

__all__ = [
    "PromptBuilder",
    "PromptFormat",
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
    "OFFICIAL_FORMATS",
    "PRISMATIC_FORMATS",
]
