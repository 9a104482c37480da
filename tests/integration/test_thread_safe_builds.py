"""Backbones built from several threads at once leave no process-wide state behind.

Before: concurrent inference-mode builds could leave `nn.Module.register_parameter` patched (every later
nn.Linear of the process then landed on the meta device), and concurrent builds with an hf_token could leave
the redacting log-record factory installed. transformers also swaps torch's default dtype and torch.nn.init
while it builds; interleaved, those swaps are restored out of order.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones._redact import REDACTED, redacting
from llm_backbones.core.backbones.loading import parameters_on_meta

pytestmark = pytest.mark.integration

THREADS = 8


def _process_state() -> dict[str, object]:
    return {
        "register_parameter": nn.Module.register_parameter,
        "log_record_factory": logging.getLogRecordFactory(),
        "default_dtype": torch.get_default_dtype(),
        "init.normal_": torch.nn.init.normal_,
        "init.kaiming_uniform_": torch.nn.init.kaiming_uniform_,
        "linear.init.kaiming_uniform_": torch.nn.modules.linear.init.kaiming_uniform_,
    }


def _assert_untouched(before: dict[str, object]) -> None:
    after = _process_state()
    changed = [key for key in before if after[key] is not before[key] and after[key] != before[key]]
    assert not changed, changed
    linear = nn.Linear(2, 2)
    assert linear.weight.device.type == "cpu" and linear.weight.dtype == torch.float32
    assert (
        float(linear.weight.detach().abs().sum()) > 0
    )  # initialised, not left empty by a disabled torch.nn.init


def _build_all(build) -> list:
    barrier = threading.Barrier(THREADS)

    def run(i: int):
        barrier.wait()  # all threads start their builds together
        return build(i)

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, range(THREADS)))


def test_inference_mode_builds_from_eight_threads(tiny_llama_dir) -> None:
    before = _process_state()
    dtypes = [torch.bfloat16 if i % 2 else torch.float32 for i in range(THREADS)]
    backbones = _build_all(
        lambda i: get_llm_backbone_and_tokenizer(
            "llama2-7b-pure", model_path=tiny_llama_dir, inference_mode=True, dtype=dtypes[i]
        )[0]
    )
    _assert_untouched(before)
    for backbone, dtype in zip(backbones, dtypes, strict=True):
        assert {p.device.type for p in backbone.parameters()} == {"meta"}
        assert {p.dtype for p in backbone.parameters()} == {dtype}
        assert backbone.llm.model.rotary_emb.inv_freq.device.type == "cpu"  # buffers stay real


def test_training_mode_builds_with_tokens_from_eight_threads(tiny_llama_dir, caplog) -> None:
    before = _process_state()
    tokens = [f"hf_threadToken{i}xxxxxxxxxxxxxxxx" for i in range(THREADS)]
    dtypes = [torch.bfloat16 if i % 2 else torch.float32 for i in range(THREADS)]

    def build(i: int):
        backbone = get_llm_backbone_and_tokenizer(
            "llama2-7b-pure", model_path=tiny_llama_dir, hf_token=tokens[i], dtype=dtypes[i]
        )[0]
        logging.getLogger("llm_backbones.test").warning("after the build: %s", tokens[i])
        return backbone

    with caplog.at_level(logging.WARNING, logger="llm_backbones.test"):
        backbones = _build_all(build)
    _assert_untouched(before)
    reference = backbones[0].llm.model.norm.weight
    for backbone, dtype in zip(backbones, dtypes, strict=True):
        assert {p.device.type for p in backbone.parameters()} == {"cpu"}
        assert {p.dtype for p in backbone.parameters()} == {dtype}
        torch.testing.assert_close(backbone.llm.model.norm.weight.float(), reference, rtol=0, atol=0)
    # Outside the builds nothing is redacted any more (no factory left behind)
    ours = sorted(r.getMessage() for r in caplog.records if r.name == "llm_backbones.test")
    assert ours == sorted(f"after the build: {t}" for t in tokens)


def test_a_meta_build_moves_only_its_own_threads_parameters() -> None:
    inside, release = threading.Event(), threading.Event()
    made: list[nn.Linear] = []

    def build_on_meta() -> None:
        with parameters_on_meta():
            made.append(nn.Linear(2, 2))
            inside.set()
            release.wait(30)

    worker = threading.Thread(target=build_on_meta)
    worker.start()
    try:
        assert inside.wait(30)
        assert nn.Linear(2, 2).weight.device.type == "cpu"  # this thread, while the other builds on meta
    finally:
        release.set()
        worker.join(30)
    assert made[0].weight.device.type == "meta"
    assert nn.Linear(2, 2).weight.device.type == "cpu"


def test_interleaved_redacting_blocks_restore_the_factory(caplog) -> None:
    # The order that used to leave a factory behind: A enters, B enters, A leaves, B leaves.
    original = logging.getLogRecordFactory()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    log = logging.getLogger("llm_backbones.test")

    def a() -> None:
        with redacting("secretA123"):
            a_in.set()
            assert b_in.wait(30)
        a_out.set()

    def b() -> None:
        assert a_in.wait(30)
        with redacting("secretB456"):
            b_in.set()
            assert a_out.wait(30)
            log.warning("both %s %s", "secretA123", "secretB456")  # A's block has ended: only B's is redacted

    with caplog.at_level(logging.WARNING, logger="llm_backbones.test"):
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert logging.getLogRecordFactory() is original
    assert caplog.records[-1].getMessage() == f"both secretA123 {REDACTED}"
