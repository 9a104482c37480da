"""A tiny VLA trained on OpenVLA's examples runs through the library's own inference path.

The training examples are built here the way OpenVLA's `RLDSBatchTransform` builds them (openvla/openvla
c8f03f4, prismatic/vla/datasets/datasets.py), written out independently of the library: the ids of the
whole Pure prompt "In: What action should the robot take to {lang}?\\nOut: {action chars}</s>" with BOS,
and `labels[: -(len(action) + 1)] = -100`. Each instruction has its own (random, fixed) image patches
spliced after BOS. The model is then run the library's way: `vla_prompt` -> `insert_patch_embeddings` ->
`generate_actions`, which generates exactly 7 tokens; every action token must come back.
"""

from __future__ import annotations

import pytest
import torch

from llm_backbones import ActionTokenizer, get_llm_backbone_and_tokenizer
from llm_backbones.data.examples import IGNORE_INDEX, insert_patch_embeddings, vla_prompt

pytestmark = pytest.mark.integration

INSTRUCTIONS = [
    "pick up the red block",
    "open the top drawer",
    "put the carrot in the pot",
    "close the microwave door",
    "push the blue cup to the left",
    "wipe the table with the sponge",
    "turn on the faucet",
    "stack the green block on the yellow block",
]
PATCHES = 4


def openvla_example(tokenizer, action_tokenizer, lang: str, action: torch.Tensor) -> dict[str, torch.Tensor]:
    """OpenVLA's RLDSBatchTransform, restated: one tokenization of the whole prompt, labels on the tail."""
    text = f"In: What action should the robot take to {lang.lower()}?\nOut: {action_tokenizer(action)}</s>"
    input_ids = torch.tensor(tokenizer(text, add_special_tokens=True).input_ids)
    labels = input_ids.clone()
    labels[: -(len(action) + 1)] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    action_tokenizer = ActionTokenizer(tokenizer)
    actions = torch.rand(len(INSTRUCTIONS), 7, dtype=torch.float64) * 2 - 1
    patches = torch.randn(len(INSTRUCTIONS), PATCHES, backbone.embed_dim)
    examples = [
        openvla_example(tokenizer, action_tokenizer, lang, a)
        for lang, a in zip(INSTRUCTIONS, actions, strict=True)
    ]
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), backbone.pad_token_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = e["input_ids"], e["labels"], 1
    batch = insert_patch_embeddings(backbone.embed_input_ids, ids, patches, mask, labels)
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=3e-3, weight_decay=0.0)
    backbone.train()
    for _ in range(60):
        spliced = insert_patch_embeddings(backbone.embed_input_ids, ids, patches, mask, labels)
        loss = backbone(**spliced).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    backbone.eval()
    return backbone, tokenizer, action_tokenizer, actions, patches, examples, batch, loss.item()


def test_openvla_labels_supervise_exactly_actions_and_eos(trained) -> None:
    _, _, action_tokenizer, actions, _, examples, _, _ = trained
    for example, action in zip(examples, actions, strict=True):
        supervised = example["input_ids"][example["labels"] != IGNORE_INDEX].tolist()
        assert supervised == action_tokenizer.encode(action).tolist() + [2]
        assert example["input_ids"][-9].item() == 29871  # the lone "▁" before the actions: not supervised


def test_library_path_decodes_every_action_token(trained) -> None:
    backbone, tokenizer, action_tokenizer, actions, patches, _, _, loss = trained
    assert loss < 0.05, f"the tiny VLA did not fit OpenVLA's examples (loss {loss})"
    correct = 0
    for row, lang in enumerate(INSTRUCTIONS):
        prompt = vla_prompt(tokenizer, backbone.prompt_builder_fn, lang)[None]
        spliced = insert_patch_embeddings(backbone.embed_input_ids, prompt, patches[row : row + 1])
        predicted = backbone.generate_actions(
            action_tokenizer, inputs_embeds=spliced["inputs_embeds"], attention_mask=spliced["attention_mask"]
        )
        assert predicted.shape == (1, 7)
        correct += int((action_tokenizer.encode(predicted[0]) == action_tokenizer.encode(actions[row])).sum())
    assert correct == 7 * len(INSTRUCTIONS)


def test_the_prompt_is_openvlas_training_prefix(trained) -> None:
    _, tokenizer, _, _, _, examples, _, _ = trained
    for lang, example in zip(INSTRUCTIONS, examples, strict=True):
        prompt = vla_prompt(tokenizer, trained[0].prompt_builder_fn, lang).tolist()
        assert prompt == example["input_ids"][:-8].tolist()
        assert prompt[-1] == 29871


def test_generate_actions_spends_no_step_on_a_separator(trained) -> None:
    backbone, tokenizer, action_tokenizer, _, patches, _, _, _ = trained
    prompt = vla_prompt(tokenizer, backbone.prompt_builder_fn, INSTRUCTIONS[0])[None]
    spliced = insert_patch_embeddings(backbone.embed_input_ids, prompt, patches[:1])
    new = backbone.generate_greedy(inputs_embeds=spliced["inputs_embeds"], max_new_tokens=8)
    low, high = action_tokenizer.token_id_range
    assert all(low <= t <= high for t in new[0, :7].tolist())  # the first generated token is an action
    assert new[0, 7].item() == 2  # then </s>: the model learned OpenVLA's stop token
