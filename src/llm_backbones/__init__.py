"""llm-backbones: the LLM-backbone layer of vision-language-action models.

Nothing runs on import beyond declaring the registry.
"""

from llm_backbones.actions import ActionTokenizer
from llm_backbones.backbones import (
    LLM_BACKBONES,
    HFCausalLLMBackbone,
    LLaMa2LLMBackbone,
    LLMBackbone,
    get_llm_backbone_and_tokenizer,
)
from llm_backbones.checkpoint import load_backbone, save_backbone
from llm_backbones.openvla import LoadedVLA, load_vla_backbone, unnormalize_actions
from llm_backbones.data import (
    IGNORE_INDEX,
    PaddedCollator,
    PaddedCollatorForActionPrediction,
    insert_patch_embeddings,
    tokenize_conversation,
    tokenize_prompt,
    vla_example,
    vla_prompt,
)
from llm_backbones.registry import (
    GEMMA2_MODELS,
    LLAMA2_MODELS,
    LLAMA3_MODELS,
    MISTRAL_MODELS,
    PHI3_MODELS,
    PHI_MODELS,
    QWEN25_MODELS,
    BackboneSpec,
    get_spec,
    prompt_builder_for,
    register_backbone,
    registered_ids,
)

__version__ = "0.1.0"

__all__ = [
    "LLMBackbone",
    "HFCausalLLMBackbone",
    "LLaMa2LLMBackbone",
    "LLAMA2_MODELS",
    "MISTRAL_MODELS",
    "PHI_MODELS",
    "LLAMA3_MODELS",
    "QWEN25_MODELS",
    "GEMMA2_MODELS",
    "PHI3_MODELS",
    "LLM_BACKBONES",
    "BackboneSpec",
    "get_llm_backbone_and_tokenizer",
    "save_backbone",
    "load_backbone",
    "load_vla_backbone",
    "LoadedVLA",
    "unnormalize_actions",
    "get_spec",
    "prompt_builder_for",
    "register_backbone",
    "registered_ids",
    "ActionTokenizer",
    "IGNORE_INDEX",
    "PaddedCollator",
    "PaddedCollatorForActionPrediction",
    "insert_patch_embeddings",
    "tokenize_conversation",
    "tokenize_prompt",
    "vla_example",
    "vla_prompt",
]
