"""The backbone contract, once, for every family: each family's test file is a subclass naming its facts.

A family's test (`test_<family>_backbone.py`) subclasses `BackboneContract` with `FAMILY` (facts shared by
its ids) and `CASES` (one per registry id: hub path, prompt builder, tiny model, embedding rows, tied or
not, the token that ends a reply). Every expected value is written out in those files; the harness only
compares. Each id is built from a local tiny model of its architecture (`model_path=`) with the family's
tokenizer (real where one is available, else a stand-in the family file names).

Checked per id (the seed's LLaMA-2 contract, generalised):
registry entry; pad token, PAD id, tokenizer length and embedding rows after the pad policy; the BOS policy
on "Test 123"; prompt builder, decoder-layer class, bf16, last-layer modules (each parameter once); tied
embeddings stay one tensor; training-mode flags; FSDP policy wraps exactly the decoder layers (tied
embedding and head stay in the root unit); `embed_input_ids`; a forward pass with labels equal to the HF
model's; a training example from the id's own prompt format whose supervision ends with the reply-end
token and whose generation prompt is a prefix; inference mode on the meta device then trained weights;
the attention implementation chosen on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from llm_backbones import LLM_BACKBONES, PromptBuilder, get_llm_backbone_and_tokenizer, get_spec
from llm_backbones.data.examples import IGNORE_INDEX, tokenize_conversation, tokenize_prompt

CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat action should the robot take to open the drawer?"},
    {"from": "gpt", "value": "Pull the handle."},
    {"from": "human", "value": "And then?"},
    {"from": "gpt", "value": "Let go."},
]


@dataclass(frozen=True)
class Family:
    """Facts every id of a family shares (as the tiny model and the family's tokenizer give them)."""

    name: str
    backbone_cls: type[nn.Module]
    llm_cls: type[nn.Module]
    layer_cls: type[nn.Module]
    adds_bos: bool
    pad_policy: str
    pad_token: str
    pad_id: int
    n_tokens: int  # len(tokenizer) once the pad policy is applied
    test_123: list[int]  # tokenizer("Test 123").input_ids
    hidden: int  # the tiny model's hidden size
    attn_on_cpu: str  # attention chosen by default on CPU
    tokenizer_note: str  # what tokenizer the tests load: real, or which stand-in and why


@dataclass(frozen=True)
class Case:
    """One registry id: its facts and the tiny model it is tested on."""

    backbone_id: str
    hub: str
    builder: type[PromptBuilder]
    tiny: str  # key of family_assets.TINY_MODELS ("llama2": the embedded tiny LLaMA-2)
    rows: int  # embedding (and LM-head) rows after loading
    tied: bool
    reply_end_id: int  # the token that ends a reply in this id's prompt format


class BackboneContract:
    FAMILY: ClassVar[Family]
    CASES: ClassVar[list[Case]]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "case" in metafunc.fixturenames:
            metafunc.parametrize("case", self.CASES, ids=[c.backbone_id for c in self.CASES], scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls, case: Case, tiny_family_model):
        backbone, tokenizer = get_llm_backbone_and_tokenizer(
            case.backbone_id, model_path=tiny_family_model(case.tiny)
        )
        return case, backbone, tokenizer

    # === Registry ===
    def test_registry_entry(self, case: Case) -> None:
        spec, fam = get_spec(case.backbone_id), self.FAMILY
        assert (spec.llm_family, spec.hf_hub_path) == (fam.name, case.hub)
        assert spec.llm_cls is fam.llm_cls and spec.layer_cls is fam.layer_cls
        assert spec.prompt_builder_fn is case.builder
        assert (spec.adds_bos, spec.pad_policy, spec.pad_token) == (
            fam.adds_bos,
            fam.pad_policy,
            fam.pad_token,
        )
        assert spec.half_precision_dtype is torch.bfloat16
        assert spec.parameters.endswith(("B", "M"))
        assert LLM_BACKBONES[case.backbone_id]["cls"] is fam.backbone_cls

    # === Loading ===
    def test_class_pad_and_resize(self, built) -> None:
        case, backbone, tokenizer = built
        fam = self.FAMILY
        assert type(backbone) is fam.backbone_cls and isinstance(backbone.llm, fam.llm_cls)
        assert backbone.identifier == case.backbone_id and tokenizer is backbone.get_tokenizer()
        assert (tokenizer.pad_token, tokenizer.pad_token_id) == (fam.pad_token, fam.pad_id)
        assert backbone.pad_token_id == fam.pad_id == backbone.llm.config.pad_token_id
        assert len(tokenizer) == fam.n_tokens
        assert backbone.llm.get_input_embeddings().weight.shape == (case.rows, fam.hidden)
        assert backbone.llm.get_output_embeddings().weight.shape == (case.rows, fam.hidden)
        assert backbone.embed_dim == fam.hidden
        assert (tokenizer.padding_side, tokenizer.model_max_length) == ("right", 2048)

    def test_bos_policy(self, built) -> None:
        _, _, tokenizer = built
        fam = self.FAMILY
        assert tokenizer("Test 123").input_ids == fam.test_123
        without = tokenizer("Test 123", add_special_tokens=False).input_ids
        assert without == (fam.test_123[1:] if fam.adds_bos else fam.test_123)

    def test_properties(self, built) -> None:
        case, backbone, _ = built
        assert backbone.prompt_builder_fn is case.builder
        assert backbone.transformer_layer_cls is self.FAMILY.layer_cls
        assert backbone.half_precision_dtype is torch.bfloat16
        modules = backbone.last_layer_finetune_modules
        embed, last, head = (
            backbone.llm.get_input_embeddings(),
            backbone.llm.get_decoder().layers[-1],
            backbone.llm.get_output_embeddings(),
        )
        # Tied: the head's only parameter is the embedding matrix, so it is not listed a second time.
        assert modules == ((embed, last) if case.tied else (embed, last, head))
        params = [p for m in modules for p in m.parameters()]
        assert len(params) == len({id(p) for p in params})

    def test_tied_embeddings_are_one_tensor(self, built) -> None:
        case, backbone, _ = built
        embed = backbone.llm.get_input_embeddings().weight
        head = backbone.llm.get_output_embeddings().weight
        assert (head is embed) is case.tied
        assert bool(backbone.llm.config.tie_word_embeddings) is case.tied

    def test_training_mode_flags(self, built) -> None:
        _, backbone, _ = built
        assert backbone.llm.config.use_cache is False
        assert next(backbone.parameters()).dtype == torch.float32
        weight = backbone.llm.get_input_embeddings().weight
        weight.requires_grad_(False)
        try:  # enable_input_require_grads: embedding outputs require grad with frozen embeddings
            assert backbone.llm.get_input_embeddings()(torch.tensor([[1, 2]])).requires_grad
        finally:
            weight.requires_grad_(True)

    def test_fsdp_policy_wraps_decoder_layers_only(self, built) -> None:
        _, backbone, _ = built
        policy = backbone.get_fsdp_wrapping_policy()
        wrapped = [n for n, m in backbone.named_modules() if policy(m, recurse=False, nonwrapped_numel=0)]
        assert wrapped == ["llm.model.layers.0", "llm.model.layers.1"]
        assert policy(backbone.llm.model, recurse=True, nonwrapped_numel=0) is True
        # the embedding and the LM head (one tensor when tied) are outside every wrapped unit: the root's
        names = {id(m): n for n, m in backbone.named_modules()}
        for module in (backbone.llm.get_input_embeddings(), backbone.llm.get_output_embeddings()):
            assert not any(names[id(module)].startswith(w + ".") for w in wrapped)

    def test_embed_input_ids_is_the_embedding_lookup(self, built) -> None:
        _, backbone, _ = built
        ids = torch.tensor([[1, 5, self.FAMILY.pad_id]])
        expected = backbone.llm.get_input_embeddings()(ids)
        torch.testing.assert_close(backbone.embed_input_ids(ids), expected, rtol=0, atol=0)

    def test_forward_with_labels(self, built) -> None:
        case, backbone, tokenizer = built
        builder = case.builder("openvla")
        builder.add_turn("human", "What action should the robot take to open the drawer?")
        ids = tokenizer(builder.get_prompt(), return_tensors="pt").input_ids
        out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        assert out.logits.shape == (1, ids.shape[1], case.rows)
        assert torch.isfinite(out.loss)
        direct = backbone.llm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        torch.testing.assert_close(out.logits, direct.logits, rtol=0, atol=0)

    def test_training_example_supervises_the_reply_end(self, built) -> None:
        case, backbone, tokenizer = built
        example = tokenize_conversation(
            tokenizer, backbone.prompt_builder_fn, CONVERSATION, model_family="openvla"
        )
        ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
        supervised = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        assert supervised.count(case.reply_end_id) == 2  # each reply's end token is learned
        assert self.FAMILY.pad_id not in ids  # the PAD token never appears in a real sequence
        # the rule: the generation prompt is the training sequence up to the reply's first supervised token
        reply = CONVERSATION[3].get("value", CONVERSATION[3].get("content"))
        prompt = tokenize_prompt(
            tokenizer, backbone.prompt_builder_fn, CONVERSATION[:3], model_family="openvla", reply=reply
        )
        assert ids[: len(prompt)] == prompt.tolist()
        assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX
        rendered = tokenize_prompt(
            tokenizer, backbone.prompt_builder_fn, CONVERSATION[:3], model_family="openvla"
        )
        assert prompt.tolist()[: len(rendered)] == rendered.tolist()  # at most a separator token longer
        assert len(prompt) - len(rendered) <= 1

    def test_attention_on_cpu(self, built) -> None:
        _, backbone, _ = built
        assert backbone.llm.config._attn_implementation == self.FAMILY.attn_on_cpu

    # === Inference mode ===
    def test_inference_mode_builds_on_meta_then_loads_trained_weights(self, built, tiny_family_model) -> None:
        case, trained, tokenizer = built
        fresh, _ = get_llm_backbone_and_tokenizer(
            case.backbone_id, model_path=tiny_family_model(case.tiny), inference_mode=True
        )
        assert fresh.llm.config.use_cache is True
        assert {p.device.type for p in fresh.parameters()} == {"meta"}
        assert fresh.llm.get_input_embeddings().weight.shape == (case.rows, self.FAMILY.hidden)
        assert fresh.pad_token_id == self.FAMILY.pad_id
        state = {k: v.clone() for k, v in trained.state_dict().items()}
        # "trained": different from the checkpoint the fresh backbone never loads
        state[next(k for k in state if ".layers.1." in k and k.endswith(".weight"))] += 0.01
        fresh.load_state_dict(state)
        assert {p.device.type for p in fresh.parameters()} == {"cpu"}
        if case.tied:
            assert fresh.llm.get_output_embeddings().weight is fresh.llm.get_input_embeddings().weight
        reference = type(trained.llm)._from_config(
            trained.llm.config, attn_implementation=self.FAMILY.attn_on_cpu
        )
        reference.load_state_dict({k.removeprefix("llm."): v for k, v in state.items()})
        ids = tokenizer("In: pick up the red block\nOut:", return_tensors="pt").input_ids
        fresh.eval(), reference.eval()
        with torch.no_grad():
            torch.testing.assert_close(
                fresh(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0
            )
