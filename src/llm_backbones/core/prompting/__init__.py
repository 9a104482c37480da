"""Prompt formats as data (`formats.PROMPT_FORMATS`, one name per rendering) and the one builder that renders
them (`builder.PromptBuilder`, Prismatic's class names, `builder_for`). Public names are imported from the
package face: `from llm_backbones import PurePromptBuilder, builder_for, PROMPT_FORMATS`."""
