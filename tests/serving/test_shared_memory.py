"""System shared memory against the shared server, driven by tritonclient.utils.shared_memory:
inputs read from and outputs written to POSIX shared memory, and every way a region can be wrong."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from cnnzoo.errors import InvalidInput
from cnnzoo.protos import grpc_service_pb2
from cnnzoo.serving.shared_memory import DEFAULT_MAX_REGIONS, SystemSharedMemory
from cnnzoo.serving.types import SharedMemoryRef
from tests.serving.checks import SAMPLE, assert_status, assert_still_serving, reference_logits
from tests.serving.helpers import MODEL
from tests.serving.requests import infer_request

CODE = grpc.StatusCode
X = SAMPLE[:2]
LOGITS_BYTES = 2 * 10 * 4


@pytest.fixture
def client(server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.target)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@contextmanager
def region(key: str, byte_size: int) -> Iterator[int]:
    """A POSIX shared-memory object made by tritonclient (its handle), destroyed afterwards."""
    handle = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
    try:
        yield handle
    finally:
        shm.destroy_shared_memory_region(handle)


def shm_input(name: str, byte_size: int, offset: int = 0, shape=X.shape) -> triton.InferInput:
    tensor = triton.InferInput("input", list(shape), "FP32")
    tensor.set_shared_memory(name, byte_size, offset)
    return tensor


def open_keys(server) -> set[str]:
    """The /dev/shm objects the server process holds open (from its /proc fd links)."""
    links = set()
    for fd in Path(f"/proc/{server.proc.pid}/fd").iterdir():
        try:
            links.add(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return {link for link in links if link.startswith("/dev/shm/")}


def test_inputs_and_outputs_in_shared_memory_equal_onnxruntime(server, client, onnx_reference):
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]
    with region("/cnnzoo_in", 64 + X.nbytes) as inputs, region("/cnnzoo_out", 128) as outputs:
        shm.set_shared_memory_region(inputs, [X], offset=64)
        client.register_system_shared_memory("in", "/cnnzoo_in", X.nbytes, offset=64)
        client.register_system_shared_memory("out", "/cnnzoo_out", 128)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["in"] == {
            "name": "in",
            "key": "/cnnzoo_in",
            "offset": "64",
            "byte_size": str(X.nbytes),
        }
        assert "/dev/shm/cnnzoo_in" in open_keys(server)

        output = triton.InferRequestedOutput("logits")
        output.set_shared_memory("out", LOGITS_BYTES, offset=16)
        result = client.infer(MODEL, [shm_input("in", X.nbytes)], outputs=[output])
        assert list(result.get_output("logits").shape) == [2, 10]
        logits = shm.get_contents_as_numpy(outputs, np.float32, [2, 10], offset=16)
        np.testing.assert_array_equal(logits, reference_logits(onnx_reference, X))

        # New contents in the same region: each request reads the client's memory as it is.
        shm.set_shared_memory_region(inputs, [X[::-1].copy()], offset=64)
        plain = triton.InferRequestedOutput("logits")
        result = client.infer(MODEL, [shm_input("in", X.nbytes)], outputs=[plain])
        np.testing.assert_array_equal(
            result.as_numpy("logits"), reference_logits(onnx_reference, X[::-1].copy())
        )

        client.unregister_system_shared_memory("in")
        assert set(client.get_system_shared_memory_status(as_json=True)["regions"]) == {"out"}
        assert "/dev/shm/cnnzoo_in" not in open_keys(server)
        client.unregister_system_shared_memory()
        assert not open_keys(server) & {"/dev/shm/cnnzoo_in", "/dev/shm/cnnzoo_out"}
        client.unregister_system_shared_memory("never-registered")  # not an error, as in Triton


def expect(call, code: str, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", info.value.message()
    for fragment in fragments:
        assert fragment in info.value.message(), info.value.message()


def test_bad_registrations(client, inference, onnx_reference):
    with region("/cnnzoo_reg", 4096):
        client.register_system_shared_memory("reg", "/cnnzoo_reg", 4096)
        expect(
            lambda: client.register_system_shared_memory("reg", "/cnnzoo_reg", 1024),
            "ALREADY_EXISTS",
            "'reg' is already registered",
        )
        for key in ("/dev/shm/cnnzoo_reg", "../cnnzoo_reg", "/", "//cnnzoo_reg", "/.."):
            expect(
                lambda key=key: client.register_system_shared_memory("path", key, 64),
                "INVALID_ARGUMENT",
                "is not a POSIX shared-memory name",
            )
        expect(
            lambda: client.register_system_shared_memory("big", "/cnnzoo_reg", 4000, offset=100),
            "INVALID_ARGUMENT",
            "offset 100 + byte_size 4000 = 4100 is beyond the end of '/cnnzoo_reg' (4096 bytes)",
        )
        expect(
            lambda: client.register_system_shared_memory("gone", "/cnnzoo_missing", 64),
            "NOT_FOUND",
            "no POSIX shared-memory object '/cnnzoo_missing'",
        )
        expect(lambda: client.get_system_shared_memory_status("nope"), "NOT_FOUND", "'nope'")
    assert_still_serving(inference, onnx_reference)


def test_bad_shared_memory_inputs_and_outputs(client, inference, onnx_reference):
    with region("/cnnzoo_bad", X.nbytes) as handle:
        shm.set_shared_memory_region(handle, [X])
        client.register_system_shared_memory("bad", "/cnnzoo_bad", X.nbytes)
        cases = {
            "unregistered region": (shm_input("unknown", X.nbytes), "NOT_FOUND", "'unknown'"),
            "offset + size beyond the region": (
                shm_input("bad", X.nbytes // 2, offset=6000, shape=(1, 1, 32, 32)),
                "INVALID_ARGUMENT",
                f"offset 6000 + byte size 4096 is outside the region ({X.nbytes} bytes)",
            ),
            "byte size not shape x dtype": (
                shm_input("bad", X.nbytes - 4),
                "INVALID_ARGUMENT",
                f"shared_memory_byte_size {X.nbytes - 4}; shape [2, 1, 32, 32] FP32 needs "
                f"{X.nbytes}",
            ),
        }
        for tensor, code, fragment in cases.values():
            expect(lambda tensor=tensor: client.infer(MODEL, [tensor]), code, fragment)
            assert_still_serving(inference, onnx_reference)

        small = triton.InferRequestedOutput("logits")
        small.set_shared_memory("bad", 40)
        expect(
            lambda: client.infer(MODEL, [shm_input("bad", X.nbytes)], outputs=[small]),
            "INVALID_ARGUMENT",
            "needs 80 bytes; shared-memory region 'bad' was given shared_memory_byte_size 40",
        )
        # tritonclient refuses this itself; other clients may not.
        ranked = infer_request(X, outputs=[("logits", 3)])
        ranked.outputs[0].parameters["shared_memory_region"].string_param = "bad"
        ranked.outputs[0].parameters["shared_memory_byte_size"].int64_param = 80
        assert_status(
            lambda: inference.ModelInfer(ranked),
            CODE.INVALID_ARGUMENT,
            "classification and a shared-memory region",
        )
        # Raw bytes beside a region for the only input: raw_input_contents has no entry to give.
        request = infer_request(X)
        request.inputs[0].parameters["shared_memory_region"].string_param = "bad"
        request.inputs[0].parameters["shared_memory_byte_size"].int64_param = X.nbytes
        assert_status(
            lambda: inference.ModelInfer(request), CODE.INVALID_ARGUMENT, "raw_input_contents has 1"
        )
        request = infer_request(X)
        request.inputs[0].parameters["shared_memory_region"].int64_param = 3
        assert_status(
            lambda: inference.ModelInfer(request), CODE.INVALID_ARGUMENT, "must be a string"
        )
    assert_still_serving(inference, onnx_reference)


def test_a_region_shrunk_or_removed_under_the_server(client, inference, onnx_reference):
    with region("/cnnzoo_shrink", X.nbytes) as handle:
        shm.set_shared_memory_region(handle, [X])
        client.register_system_shared_memory("shrink", "/cnnzoo_shrink", X.nbytes)
        client.infer(MODEL, [shm_input("shrink", X.nbytes)])
        os.truncate("/dev/shm/cnnzoo_shrink", 1024)  # reading past it would be SIGBUS
        expect(
            lambda: client.infer(MODEL, [shm_input("shrink", X.nbytes)]),
            "INVALID_ARGUMENT",
            "'/cnnzoo_shrink' shrank to 1024 bytes",
        )
        assert_still_serving(inference, onnx_reference)
    with region("/cnnzoo_gone", X.nbytes) as handle:
        shm.set_shared_memory_region(handle, [X])
        client.register_system_shared_memory("gone", "/cnnzoo_gone", X.nbytes)
        os.unlink("/dev/shm/cnnzoo_gone")
        expect(
            lambda: client.infer(MODEL, [shm_input("gone", X.nbytes)]),
            "INVALID_ARGUMENT",
            "was removed or replaced after it was registered",
        )
        with region("/cnnzoo_gone", X.nbytes):  # a new object under the old name
            expect(
                lambda: client.infer(MODEL, [shm_input("gone", X.nbytes)]),
                "INVALID_ARGUMENT",
                "was removed or replaced",
            )
        os.close(os.open("/dev/shm/cnnzoo_gone", os.O_CREAT))  # for the destroy call
    assert_still_serving(inference, onnx_reference)


def test_the_number_of_regions_is_bounded(client, inference, onnx_reference):
    with region("/cnnzoo_many", 64):
        for i in range(DEFAULT_MAX_REGIONS):
            client.register_system_shared_memory(f"r{i}", "/cnnzoo_many", 64)
        expect(
            lambda: client.register_system_shared_memory("one-more", "/cnnzoo_many", 64),
            "RESOURCE_EXHAUSTED",
            f"the most this server holds ({DEFAULT_MAX_REGIONS})",
        )
        client.unregister_system_shared_memory()
        client.register_system_shared_memory("one-more", "/cnnzoo_many", 64)
    assert_still_serving(inference, onnx_reference)


def test_an_input_is_the_regions_bytes_at_the_time_of_the_request(tmp_path):
    """What ONNX Runtime is given is the server's own copy: a client that changes or shrinks its
    object afterwards cannot change or crash a request already decoded."""
    (tmp_path / "obj").write_bytes(bytes(4096))
    registry = SystemSharedMemory(root=tmp_path)
    registry.register("r", "/obj", 1024, 2048)
    with open(tmp_path / "obj", "r+b") as handle:
        client_view = mmap.mmap(handle.fileno(), 4096)
        client_view[1024 + 16 : 1024 + 20] = np.float32(2.5).tobytes()
        array = np.frombuffer(registry.view(SharedMemoryRef("r", 16, 64)), dtype=np.float32)
        assert array[0] == 2.5
        client_view[1024 + 16 : 1024 + 20] = np.float32(7.0).tobytes()
        client_view.close()
    os.truncate(tmp_path / "obj", 0)
    assert array[0] == 2.5 and array.sum() == 2.5  # the copy, whole
    with pytest.raises(InvalidInput, match="shrank to 0 bytes"):
        registry.view(SharedMemoryRef("r", 16, 64))
    registry.close()


def test_cuda_shared_memory_lists_none(inference):
    status = inference.CudaSharedMemoryStatus(grpc_service_pb2.CudaSharedMemoryStatusRequest())
    assert not status.regions
    inference.CudaSharedMemoryUnregister(grpc_service_pb2.CudaSharedMemoryUnregisterRequest())
    assert_status(
        lambda: inference.CudaSharedMemoryStatus(
            grpc_service_pb2.CudaSharedMemoryStatusRequest(name="x")
        ),
        CODE.NOT_FOUND,
        "no CUDA shared-memory region 'x'",
    )
