"""`llm-backbones serve` as a real uvicorn process on a loopback port, called as OpenVLA's clients call
deploy.py: answers equal `VLAPolicy.predict_action` run here on the same checkpoint; 32 concurrent clients
are batched and each gets its own answer; bad requests get a 4xx naming the problem and the server keeps
answering; a SIGTERM with requests in flight answers all of them.

The checkpoint is tests/vla_checkpoints.py's single-tower CLIP one (towers cut to 3 blocks), with two datasets
of statistics, so a request must name its unnorm_key (or be refused as ambiguous).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import openvla_reference_spec as spec
from llm_backbones.errors import ImageError, NormStatsError
from llm_backbones.serving.client import PolicyClient
from llm_backbones.vla.loading import load_vla
from serve_process import ServerProcess, request
from vla_checkpoints import write_hf_checkpoint

json_numpy = pytest.importorskip("json_numpy", reason="the server needs the `serve` extra")
pytest.importorskip("fastapi", reason="the server needs the `serve` extra")
pytest.importorskip("uvicorn", reason="the server needs the `serve` extra")

pytestmark = pytest.mark.integration

NAME = "clip-224-crop"
# 8 distinct observations, both datasets: (image index, size, instruction, unnorm_key)
CASES = [
    (
        200 + i,
        spec.IMAGE_SIZES[i % len(spec.IMAGE_SIZES)],
        text,
        ("bridge_orig", "fractal20220817_data")[i % 2],
    )
    for i, text in enumerate(
        [
            "pick up the red block",
            "move left",
            "put the spoon in the bowl and then close the microwave door",
            "Open the top drawer",
            "wipe",
            "place the carrot on the plate next to the yellow sponge",
            "stack the cups",
            "push the button",
        ]
    )
]


def observation(case) -> tuple[np.ndarray, str, str]:
    index, (height, width), text, key = case
    return spec.image(index, height, width), text, key


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_hf_checkpoint(NAME, tmp_path_factory.mktemp(NAME))


@pytest.fixture(scope="module")
def server(checkpoint):
    server = ServerProcess.start(checkpoint, "--max-batch", "8", "--max-wait-ms", "10")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def policy(checkpoint):
    """The reference: the same checkpoint loaded here, called one observation at a time."""
    return load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)


@pytest.fixture(scope="module")
def expected(policy) -> list[np.ndarray]:
    return [policy.predict_action(*observation(case)[:2], unnorm_key=case[3]) for case in CASES]


def post_act(url: str, body: bytes, content_type: str | None = "application/json") -> tuple[int, bytes]:
    return request(url + "/act", body, content_type)


def test_deploy_py_request_equals_predict_action(server, policy, expected):
    image, text, key = observation(CASES[0])
    # deploy.py's client: json_numpy.patch(); requests.post(url, json={"image": ..., "instruction": ...})
    # sends json.dumps of the dict with json-numpy's encoder; written out here
    body = json_numpy.dumps({"image": image, "instruction": text, "unnorm_key": key}).encode()
    assert json.loads(body)["image"]["shape"] == [224, 224, 3] and '"__numpy__"' in body.decode()
    status, answer = post_act(server.url, body)
    assert status == 200, answer
    action = json_numpy.loads(answer)  # deploy.py answers the array as json-numpy
    assert isinstance(action, np.ndarray) and action.shape == (7,) and action.dtype == np.float64
    np.testing.assert_array_equal(action, expected[0])
    assert len({a.tobytes() for a in expected}) >= 4  # the observations' actions differ: answers can't mix

    # deploy.py's double-encoded form: {"encoded": json_numpy.dumps(payload)}, answered as a JSON string
    status, answer = post_act(server.url, json.dumps({"encoded": body.decode()}).encode())
    assert status == 200, answer
    text_answer = json.loads(answer)
    assert isinstance(text_answer, str)
    np.testing.assert_array_equal(json_numpy.loads(text_answer), expected[0])


def test_policy_client_and_binary_form_equal_predict_action(server, expected):
    client = PolicyClient(server.url)
    for case, want in zip(CASES[:3], expected[:3], strict=True):
        image, text, key = observation(case)
        action = client.act(image, text, unnorm_key=key)
        assert action.dtype == np.float64
        np.testing.assert_array_equal(action, want)
    facts = client.health()
    assert facts["policy"]["vision_backbone_id"] == "clip-vit-l"
    assert (facts["device"], facts["dtype"]) == ("cpu", "float32")
    assert facts["policy"]["unnorm_keys"] == ["bridge_orig", "fractal20220817_data"]


def test_32_concurrent_clients_are_batched_and_each_gets_its_own_answer(server, expected):
    before = server.health()
    client = PolicyClient(server.url)
    start = threading.Barrier(32)

    def one(i: int) -> np.ndarray:
        image, text, key = observation(CASES[i % len(CASES)])
        start.wait()
        return client.act(image, text, unnorm_key=key)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, expected[i % len(CASES)], err_msg=f"client {i}")
    after = server.health()
    batches = after["batches_served"] - before["batches_served"]
    assert after["requests_served"] - before["requests_served"] == 32
    assert batches < 32 and after["largest_batch"] > 1  # batched: fewer model calls than requests
    assert after["largest_batch"] <= 8  # --max-batch
    assert after["mean_batch_size"] > before["mean_batch_size"]
    assert after["latency_ms"]["p50"] > 0 and after["latency_ms"]["p99"] >= after["latency_ms"]["p50"]
    assert (after["queue_depth"], after["in_flight"]) == (0, 0)


def _array(shape, dtype=np.uint8, fill=7) -> np.ndarray:
    return np.full(shape, fill, dtype=dtype)


def _json(**payload) -> bytes:
    return json_numpy.dumps(payload).encode()


GOOD = {"image": _array((224, 224, 3)), "instruction": "pick up the red block", "unnorm_key": "bridge_orig"}


def _npy(array, allow_pickle=False) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


J, N = "application/json", "application/x-npy"
Q = "?instruction=wipe&unnorm_key=bridge_orig"


def _numpy_field(b64: str, dtype: str, shape: list[int]) -> bytes:
    return json.dumps(
        {"image": {"__numpy__": b64, "dtype": dtype, "shape": shape}, "instruction": "w"}
    ).encode()


# (id, body, content type, query string, status, error type, words the message must hold)
BAD = [
    ("not-json", b"{not json", J, "", 400, "RequestFormatError", "not valid JSON"),
    ("empty-body", b"", J, "", 400, "RequestFormatError", "not valid JSON"),
    ("json-list", b"[1, 2]", J, "", 400, "RequestFormatError", "must be a JSON object"),
    ("no-image", _json(instruction="wipe", unnorm_key="bridge_orig"), J, "", 400, "RequestFormatError",
     "lacks image"),
    ("no-instruction", _json(image=GOOD["image"], unnorm_key="bridge_orig"), J, "", 400, "RequestFormatError",
     "lacks instruction"),
    ("misspelled-key", _json(**{**GOOD, "unnorm-key": "bridge_orig"}), J, "", 400, "RequestFormatError",
     "Unknown request keys ['unnorm-key']"),
    ("image-as-list", json.dumps({"image": [[[0, 0, 0]]], "instruction": "wipe"}).encode(), J, "", 400,
     "RequestFormatError", "json_numpy.patch()"),
    ("bad-base64", _numpy_field("%%%", "|u1", [1, 1, 3]), J, "", 400, "RequestFormatError", "json-numpy"),
    ("shape-vs-bytes", _numpy_field("AAAA", "|u1", [224, 224, 3]), J, "", 400, "RequestFormatError",
     "not valid JSON with json-numpy"),
    ("object-dtype", _numpy_field("AAAA", "|O", [1]), J, "", 400, "RequestFormatError", "json-numpy"),
    ("nested-deeply", b"[" * 200_000 + b"]" * 200_000, J, "", 400, "RequestFormatError", "nested too deeply"),
    ("encoded-plus-keys", json.dumps({"encoded": "{}", "instruction": "wipe"}).encode(), J, "", 400,
     "RequestFormatError", "only the key 'encoded'"),
    ("encoded-not-string", b'{"encoded": {"image": 1}}', J, "", 400, "RequestFormatError",
     "'encoded' must be a string"),
    ("encoded-not-json", b'{"encoded": "{nope"}', J, "", 400, "RequestFormatError",
     "'encoded' string is not valid JSON"),
    ("grayscale", _json(**{**GOOD, "image": _array((224, 224))}), J, "", 422, "ImageError", "H x W x 3"),
    ("rgba", _json(**{**GOOD, "image": _array((224, 224, 4))}), J, "", 422, "ImageError",
     "got shape (224, 224, 4)"),
    ("int64-pixels", _json(**{**GOOD, "image": _array((224, 224, 3), np.int64)}), J, "", 422, "ImageError",
     "dtype int64"),
    ("float-over-1", _json(**{**GOOD, "image": _array((8, 8, 3), np.float32, 2.0)}), J, "", 422, "ImageError",
     "[0, 1]"),
    ("nan-pixels", _json(**{**GOOD, "image": _array((8, 8, 3), np.float32, np.nan)}), J, "", 422,
     "ImageError", "NaN"),
    ("empty-image", _json(**{**GOOD, "image": _array((0, 224, 3))}), J, "", 422, "ImageError",
     "got shape (0, 224, 3)"),
    ("empty-instruction", _json(**{**GOOD, "instruction": ""}), J, "", 422, "InputShapeError",
     "non-empty string"),
    ("blank-instruction", _json(**{**GOOD, "instruction": "  \n"}), J, "", 422, "InputShapeError",
     "non-empty string"),
    ("long-instruction", _json(**{**GOOD, "instruction": "x" * 2001}), J, "", 422, "InputShapeError",
     "2001 characters, more than 2000"),
    ("number-instruction", _json(**{**GOOD, "instruction": 42}), J, "", 422, "InputShapeError", "got 42"),
    ("unknown-unnorm-key", _json(**{**GOOD, "unnorm_key": "bridge"}), J, "", 422, "NormStatsError",
     "Closest: bridge_orig"),
    ("no-unnorm-key-two-datasets", _json(image=GOOD["image"], instruction="wipe"), J, "", 422,
     "NormStatsError", "ambiguous"),
    ("list-unnorm-key", _json(**{**GOOD, "unnorm_key": ["bridge_orig"]}), J, "", 422, "NormStatsError",
     "must be a string"),
    ("over-16-mib", b"x" * (16 * 2**20 + 1), J, "", 413, "RequestFormatError", "limit of 16,777,216 bytes"),
    ("text-plain", b"hello", "text/plain", "", 415, "RequestFormatError", "'text/plain' is not accepted"),
    ("npy-garbage", b"\x93NUMPY not really", N, Q, 400, "RequestFormatError", "not a .npy array"),
    ("npy-pickle", _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), N, Q, 400,
     "RequestFormatError", "not a .npy array"),
    ("npy-no-instruction", _npy(GOOD["image"]), N, "?unnorm_key=bridge_orig", 400, "RequestFormatError",
     "instruction as a query parameter"),
    ("npy-unknown-param", _npy(GOOD["image"]), N, "?instruction=wipe&unnorm=bridge_orig", 400,
     "RequestFormatError", "Unknown query parameters ['unnorm']"),
    ("npy-chw", _npy(np.zeros((3, 224, 224), np.uint8)), N, Q, 422, "ImageError", "np.moveaxis"),
]  # fmt: skip


def test_the_matrix_has_at_least_20_distinct_rows():
    assert len(BAD) >= 20 and len({row[0] for row in BAD}) == len(BAD)


@pytest.mark.parametrize(("body", "content_type", "query", "status", "kind", "words"), [r[1:] for r in BAD],
                         ids=[r[0] for r in BAD])  # fmt: skip
def test_bad_request_gets_a_4xx_naming_the_problem(server, body, content_type, query, status, kind, words):
    got_status, answer = request(server.url + "/act" + query, body, content_type)
    error = json.loads(answer)
    assert (got_status, error["error"], error["status"]) == (status, kind, status), error
    assert words in error["message"], error["message"]
    assert server.proc.poll() is None and server.health()["status"] == "ok"


def test_server_still_answers_after_the_bad_requests(server, expected):
    """Run after the matrix (file order): a good request still gets its exact action."""
    image, text, key = observation(CASES[1])
    status, answer = post_act(server.url, _json(image=image, instruction=text, unnorm_key=key))
    assert status == 200, answer
    np.testing.assert_array_equal(json_numpy.loads(answer), expected[1])
    assert server.health()["errors"]["5xx"] == 0


def test_policy_client_raises_the_policy_s_typed_errors(server):
    client = PolicyClient(server.url)
    with pytest.raises(NormStatsError, match="Closest: bridge_orig") as caught:
        client.act(GOOD["image"], "wipe", unnorm_key="bridge")
    assert caught.value.status == 422
    with pytest.raises(ImageError, match="got shape"):
        client.act(np.zeros((4, 4), np.uint8), "wipe", unnorm_key="bridge_orig")


def test_sigterm_with_requests_in_flight_answers_every_one(checkpoint, expected):
    # a long --max-wait-ms keeps the 12 requests queued (in flight) while SIGTERM arrives
    server = ServerProcess.start(checkpoint, "--max-batch", "16", "--max-wait-ms", "1500")
    try:
        server.wait_ready()
        client = PolicyClient(server.url)
        with ThreadPoolExecutor(12) as pool:
            futures = [
                pool.submit(client.act, *observation(CASES[i % len(CASES)])[:2], CASES[i % len(CASES)][3])
                for i in range(12)
            ]
            deadline = time.monotonic() + 60
            while server.health()["in_flight"] < 12:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # uvicorn closes its listening socket at once: no new connection is accepted
            with (
                pytest.raises(OSError),
                socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))),
            ):
                pass
            assert not any(f.done() for f in futures)  # still in flight, after the refusal
            answers = [f.result(timeout=120) for f in futures]
        for i, answer in enumerate(answers):
            np.testing.assert_array_equal(answer, expected[i % len(CASES)], err_msg=f"request {i}")
        assert server.proc.wait(60) in (0, -signal.SIGTERM), server.output()
    finally:
        server.stop()
