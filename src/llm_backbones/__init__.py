"""llm-backbones: the LLM-backbone layer of vision-language-action models.

Every name below is imported on first use (PEP 562): `import llm_backbones` loads neither torch nor
transformers, and reading a name loads only the module that defines it. The layers underneath:
`core` (registry, prompt formats, backbones), `runtime` (generation, fused kernels), `data` (examples,
collator, action tokens), `persistence` (save/load, OpenVLA checkpoints), `training` (fine-tuning, FSDP),
`serving` (the policy server and its client), `app` (CLI, demo, info); see the README's architecture section.
"""

import importlib as _importlib

from llm_backbones._version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["LLMBackbone", "HFCausalLLMBackbone"], "llm_backbones.core.backbones.backbone"),
    "LLaMa2LLMBackbone": "llm_backbones.core.backbones.llama2",
    **dict.fromkeys(
        ["LLM_BACKBONES", "get_llm_backbone_and_tokenizer"], "llm_backbones.core.backbones.factory"
    ),
    **dict.fromkeys(
        [
            "LLAMA2_MODELS",
            "MISTRAL_MODELS",
            "PHI_MODELS",
            "LLAMA3_MODELS",
            "QWEN25_MODELS",
            "GEMMA2_MODELS",
            "PHI3_MODELS",
            "BackboneSpec",
            "get_spec",
            "prompt_builder_for",
            "register_backbone",
            "registered_ids",
        ],
        "llm_backbones.core.registry",
    ),
    **dict.fromkeys(["save_backbone", "load_backbone"], "llm_backbones.persistence.checkpoint"),
    **dict.fromkeys(["load_vla_backbone", "LoadedVLA"], "llm_backbones.persistence.openvla"),
    **dict.fromkeys(["unnormalize_actions", "validate_norm_stats"], "llm_backbones.data.norm_stats"),
    **dict.fromkeys(
        ["PromptFormat", "PROMPT_FORMATS", "get_prompt_format", "register_prompt_format"],
        "llm_backbones.core.prompting.formats",
    ),
    **dict.fromkeys(
        [
            "PromptBuilder",
            "PromptBuilderFactory",
            "builder_for",
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
        ],
        "llm_backbones.core.prompting.builder",
    ),
    "ActionTokenizer": "llm_backbones.data.actions",
    "load_vla": "llm_backbones.vla.loading",
    "build_vla": "llm_backbones.vla.assemble",
    "export_openvla": "llm_backbones.vla.export",
    "open_robot_dataset": "llm_backbones.data.robot.reader",
    "VLAPolicy": "llm_backbones.vla.policy",
    "ImageProcessor": "llm_backbones.vla.image_processing",
    **dict.fromkeys(["VISION_BACKBONES", "get_vision_spec"], "llm_backbones.vla.vision"),
    "PolicyClient": "llm_backbones.serving.client",
    "create_app": "llm_backbones.serving.server",
    **dict.fromkeys(
        [
            "IGNORE_INDEX",
            "PaddedCollator",
            "PaddedCollatorForActionPrediction",
            "insert_patch_embeddings",
            "tokenize_conversation",
            "tokenize_prompt",
            "vla_example",
            "vla_prompt",
        ],
        "llm_backbones.data.examples",
    ),
}
# subpackages and modules reachable as attributes (`llm_backbones.errors.FinetuneError`) without an import
_SUBMODULES = frozenset(
    {"errors", "core", "runtime", "data", "persistence", "vla", "training", "serving", "app"}
)

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next read is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
