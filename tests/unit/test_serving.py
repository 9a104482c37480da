"""The policy server's parts without a model: the batching queue (grouping by dataset, max batch, max wait,
a failing batch, shutdown), the app over HTTP with a fake policy (a model exception fails only its batch, with
a 500), the client's errors, the `act` command, and the one-line message when the `serve` extra is missing.
The real server on a real checkpoint: tests/integration/test_serve.py."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_backbones.errors import (
    ImageError,
    InputShapeError,
    MissingDependencyError,
    NormStatsError,
    ServeConfigError,
    ServingError,
)
from llm_backbones.serving.batching import BatchingQueue
from llm_backbones.serving.client import PolicyClient
from llm_backbones.serving.protocol import require_serve_packages
from serve_process import free_port, request

pytest.importorskip("fastapi", reason="the server needs the `serve` extra")
pytest.importorskip("uvicorn", reason="the server needs the `serve` extra")
pytest.importorskip("json_numpy", reason="the server needs the `serve` extra")


class FakePolicy:
    """Answers [instruction as a number, ord(key), image sum]; the dataset "boom" makes the model raise."""

    vision_backbone_id = "fake-vit"
    device = "cpu"
    dtype = "torch.float32"
    norm_stats = {"a": {}, "b": {}, "boom": {}}

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def check_inputs(self, image, instruction, unnorm_key=None):
        if not isinstance(image, np.ndarray) or image.ndim != 3:
            raise ImageError(f"fake: an image must be H x W x 3, got {getattr(image, 'shape', image)}")
        if not isinstance(instruction, str) or not instruction:
            raise InputShapeError("fake: instruction must be a non-empty string")
        if unnorm_key not in self.norm_stats:
            raise NormStatsError(f"fake: unknown unnorm_key {unnorm_key!r}")
        return image, unnorm_key

    def predict_actions(self, images, instructions, unnorm_key=None):
        self.calls.append((unnorm_key, list(instructions)))
        time.sleep(0.05)  # the others queue up meanwhile
        if unnorm_key == "boom":
            raise RuntimeError("CUDA out of memory (fake)")
        return np.array(
            [
                [float(t), ord(unnorm_key[0]), float(i.sum())]
                for i, t in zip(images, instructions, strict=True)
            ]
        )


def fake_predict(calls):
    def predict(images, texts, key):
        calls.append((key, list(texts)))
        time.sleep(0.03)
        if key == "boom":
            raise RuntimeError("model exploded")
        return np.array([[float(t), ord(key[0])] for t in texts])

    return predict


def test_batches_hold_one_dataset_at_most_max_batch_and_each_request_gets_its_own_answer():
    calls = []

    async def main():
        queue = BatchingQueue(fake_predict(calls), max_batch=4, max_wait_s=0.01)
        queue.start()
        keys = ["a" if i % 3 else "b" for i in range(20)]
        answers = await asyncio.gather(*(queue.submit(None, str(i), k) for i, k in enumerate(keys)))
        await queue.close()
        return keys, answers, queue.stats.summary()

    keys, answers, stats = asyncio.run(main())
    for i, (key, answer) in enumerate(zip(keys, answers, strict=True)):
        assert answer.tolist() == [float(i), ord(key)]
    assert sorted(int(t) for _, texts in calls for t in texts) == list(range(20))  # each ran exactly once
    for key, texts in calls:
        assert 1 <= len(texts) <= 4 and {keys[int(t)] for t in texts} == {key}  # one dataset per call
    assert len(calls) == 6  # 13 "a" in 4 calls (4+4+4+1), 7 "b" in 2 (4+3)
    assert stats["batches_served"] == 6 and stats["requests_served"] == 20 and stats["largest_batch"] == 4


def test_a_batch_runs_when_full_or_when_its_oldest_request_waited_max_wait():
    async def elapsed(n: int) -> float:
        queue = BatchingQueue(fake_predict([]), max_batch=2, max_wait_s=0.4)
        queue.start()
        start = time.perf_counter()
        await asyncio.gather(*(queue.submit(None, "1", "a") for _ in range(n)))
        took = time.perf_counter() - start
        await queue.close()
        return took

    assert asyncio.run(elapsed(1)) >= 0.4  # alone: waited max_wait for companions
    assert asyncio.run(elapsed(2)) < 0.3  # a full batch runs at once


def test_an_exception_in_the_model_fails_only_its_batch_and_the_queue_keeps_serving():
    calls = []

    async def main():
        queue = BatchingQueue(fake_predict(calls), max_batch=8, max_wait_s=0.01)
        queue.start()
        results = await asyncio.gather(
            *(queue.submit(None, str(i), "boom" if i < 3 else "a") for i in range(6)), return_exceptions=True
        )
        later = await queue.submit(None, "9", "a")
        await queue.close()
        return results, later, queue.stats.summary()

    results, later, stats = asyncio.run(main())
    for failed in results[:3]:
        assert isinstance(failed, ServingError) and failed.status == 500
        assert "RuntimeError: model exploded" in str(failed) and "keeps serving" in str(failed)
    assert [r.tolist() for r in results[3:]] == [[3.0, 97.0], [4.0, 97.0], [5.0, 97.0]]
    assert later.tolist() == [9.0, 97.0]
    assert stats["failed_batches"] == 3  # the failed batch of 3, run again request by request: each fails
    assert [c for c in calls if c[0] == "boom"][0][1] == ["0", "1", "2"]  # first as one batch


def test_one_bad_request_fails_alone_not_its_batch():
    """A request the policy refuses only inside the model call (e.g. a prompt too long for the LLM once
    tokenized) fails with a 422 naming its problem; its batch-mates get their actions."""
    calls = []

    def predict(images, texts, key):
        calls.append(list(texts))
        if "bad" in texts:
            from llm_backbones.errors import TokenizationError

            raise TokenizationError("The prompt has 8012 tokens, more than llm_max_length 2048.")
        return np.array([[float(len(t)), 1.0] for t in texts])

    async def main():
        queue = BatchingQueue(predict, max_batch=8, max_wait_s=0.05)
        queue.start()
        results = await asyncio.gather(
            *(queue.submit(None, t, "a") for t in ("ok", "bad", "fine")), return_exceptions=True
        )
        await queue.close()
        return results

    ok, bad, fine = asyncio.run(main())
    assert ok.tolist() == [2.0, 1.0] and fine.tolist() == [4.0, 1.0]
    assert isinstance(bad, ServingError) and bad.status == 422 and "8012 tokens" in str(bad)
    assert calls[0] == ["ok", "bad", "fine"] and sorted(calls[1:]) == [["bad"], ["fine"], ["ok"]]


def test_close_answers_what_is_queued_then_refuses_new_requests():
    async def main():
        queue = BatchingQueue(fake_predict([]), max_batch=100, max_wait_s=30)
        queue.start()
        pending = [asyncio.ensure_future(queue.submit(None, str(i), "a")) for i in range(5)]
        await asyncio.sleep(0.05)
        assert queue.depth == 5
        start = time.perf_counter()
        await queue.close()  # does not wait out the 30 s
        took = time.perf_counter() - start
        with pytest.raises(ServingError, match="shutting down") as refused:
            await queue.submit(None, "6", "a")
        return [p.result().tolist() for p in pending], took, refused.value.status

    answers, took, status = asyncio.run(main())
    assert answers == [[float(i), 97.0] for i in range(5)] and took < 5 and status == 503


@pytest.mark.parametrize(
    ("options", "words"),
    [({"max_batch": 0}, "max_batch must be an int >= 1"), ({"max_wait_s": -1}, "max_wait must be between")],
)
def test_bad_queue_settings_are_refused(options, words):
    with pytest.raises(ServeConfigError, match=words):
        BatchingQueue(fake_predict([]), **options)


@pytest.fixture(scope="module")
def fake_server():
    """The real app and uvicorn, in this process (a thread), over a fake policy."""
    import uvicorn

    from llm_backbones.serving.server import create_app

    policy = FakePolicy()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(policy, max_batch=4, max_wait_ms=20), port=port, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", policy
    server.should_exit = True
    thread.join(30)


def test_a_model_exception_answers_500_for_its_batch_only_and_the_server_keeps_serving(fake_server):
    url, _ = fake_server
    client = PolicyClient(url)
    image = np.ones((2, 2, 3), np.uint8)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.act, image, str(i), "boom" if i % 2 else "a") for i in range(6)]
        outcomes = [f.exception() or f.result() for f in futures]
    for i, outcome in enumerate(outcomes):
        if i % 2:
            assert isinstance(outcome, ServingError) and outcome.status == 500, outcome
            assert "RuntimeError: CUDA out of memory (fake)" in str(outcome)
        else:
            assert outcome.tolist() == [float(i), 97.0, 12.0]
    assert client.act(image, "7", "b").tolist() == [7.0, 98.0, 12.0]
    health = client.health()
    assert health["errors"]["5xx"] == 3 and health["failed_batches"] >= 1 and health["status"] == "ok"


def test_thirty_two_clients_each_get_their_own_answer(fake_server):
    url, policy = fake_server
    client = PolicyClient(url)
    policy.calls.clear()
    start = threading.Barrier(32)

    def one(i: int) -> list[float]:
        start.wait()
        return client.act(np.full((2, 2, 3), i, np.uint8), str(i), "ab"[i % 2]).tolist()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert answers == [[float(i), ord("ab"[i % 2]), 12.0 * i] for i in range(32)]
    assert max(len(texts) for _, texts in policy.calls) > 1 and len(policy.calls) < 32
    assert all(len(texts) <= 4 for _, texts in policy.calls)


def test_the_act_command_prints_the_servers_action(fake_server, tmp_path):
    from PIL import Image

    from llm_backbones.app.cli import app

    url, _ = fake_server
    Image.fromarray(np.full((4, 5, 3), 2, np.uint8)).save(tmp_path / "frame.png")
    result = CliRunner().invoke(
        app, ["act", url, "--image", str(tmp_path / "frame.png"), "--instruction", "3", "--unnorm-key", "a"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [3.0, 97.0, 120.0]
    result = CliRunner().invoke(
        app, ["act", url, "--image", str(tmp_path / "none.png"), "--instruction", "3"]
    )
    assert result.exit_code == 1 and "none.png' is not a file" in result.output


def test_the_client_names_an_unreachable_server_and_a_bad_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServingError, match=f"No answer from the policy server at {url}"):
        PolicyClient(url, timeout=5).act(np.zeros((2, 2, 3), np.uint8), "wipe")
    with pytest.raises(ServingError, match="must be http://HOST:PORT"):
        PolicyClient("127.0.0.1:8000")
    with pytest.raises(ImageError, match="holding Python objects"):
        PolicyClient(url).act([[1, None]], "wipe")


def test_health_names_the_policy_and_the_settings(fake_server):
    url, _ = fake_server
    status, body = request(url + "/health")
    health = json.loads(body)
    assert status == 200 and health["policy"]["vision_backbone_id"] == "fake-vit"
    assert (health["device"], health["dtype"], health["max_batch"], health["max_wait_ms"]) == (
        "cpu",
        "float32",
        4,
        20.0,
    )
    assert set(health) >= {"queue_depth", "batches_served", "mean_batch_size", "latency_ms"}


def test_missing_serve_packages_are_named_with_the_install_line():
    with pytest.raises(MissingDependencyError) as caught:
        require_serve_packages("fastapi", "no_such_module_for_this_test")
    assert (
        str(caught.value) == "Serving needs no-such-module-for-this-test: pip install 'llm-backbones[serve]'"
    )
    assert isinstance(caught.value, ImportError)


def test_serve_without_the_extra_is_one_error_line_before_any_model_is_loaded(tmp_path):
    code = (
        "import sys; sys.modules['fastapi'] = None\n"  # `import fastapi` raises ImportError
        "from llm_backbones.app.cli import app\n"
        f"app(['serve', {str(tmp_path / 'no-checkpoint')!r}], prog_name='llm-backbones')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip() == "error: Serving needs fastapi: pip install 'llm-backbones[serve]'"
    assert "Traceback" not in proc.stderr


def test_binary_helpers_round_trip_and_refuse_pickles():
    from llm_backbones.errors import RequestFormatError
    from llm_backbones.serving.protocol import decode_npy, encode_npy

    action = np.array([0.25, -1.0, 3.5])
    assert np.array_equal(decode_npy(encode_npy(action)), action)
    buffer = io.BytesIO()
    np.save(buffer, np.array([object()]), allow_pickle=True)
    with pytest.raises(RequestFormatError, match="not a .npy array"):
        decode_npy(buffer.getvalue())
