"""Prompt formats (data) and the one builder that renders them; Prismatic's class names exported."""

from llm_backbones.prompting.builder import (
    LLaMa2ChatPromptBuilder,
    MistralInstructPromptBuilder,
    PhiPromptBuilder,
    PromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from llm_backbones.prompting.formats import OFFICIAL_FORMATS, PRISMATIC_FORMATS, PromptFormat

__all__ = [
    "PromptBuilder",
    "PromptFormat",
    "PurePromptBuilder",
    "LLaMa2ChatPromptBuilder",
    "VicunaV15ChatPromptBuilder",
    "MistralInstructPromptBuilder",
    "PhiPromptBuilder",
    "OFFICIAL_FORMATS",
    "PRISMATIC_FORMATS",
]
