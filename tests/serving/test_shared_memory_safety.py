"""System shared memory cannot crash the server or reach another user's memory.

A server of its own (a crash here must not take the shared one down). tritonclient is the first
user (root in CI); a second user (`nobody`) is a child process that drops to uid 65534 and speaks
REST with the standard library, so the rules are checked between two real users of one host.
The same rules for clients the server cannot identify (another host or container) are checked
on the registry itself, with such a caller recorded as the front ends record it.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - loaded now: the second user may not read the interpreter's files
import http.client
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.serving.peers import CALLER, Caller
from cnnzoo.serving.shared_memory import SharedMemoryPolicy, SystemSharedMemory
from cnnzoo.serving.types import SharedMemoryRef
from tests.serving.helpers import MODEL, ServerProcess

X = np.random.default_rng(3).standard_normal((64, 1, 32, 32)).astype(np.float32)
LOGITS = 64 * 10 * 4
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second user needs root to become it")


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("shm-safety") / "server.log"
    process = ServerProcess(repository, log, "--model", MODEL).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture
def client(server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.target)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@contextlib.contextmanager
def region(key: str, byte_size: int) -> Iterator[int]:
    handle = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            shm.destroy_shared_memory_region(handle)


def shm_request(name_in: str, name_out: str | None = None):
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_shared_memory(name_in, X.nbytes)
    output = triton.InferRequestedOutput("logits")
    if name_out is not None:
        output.set_shared_memory(name_out, LOGITS)
    return [tensor], [output]


def test_shrinking_regions_under_requests_never_kills_the_server(server, client, onnx_reference):
    """A client truncates its input and output objects while requests read and write them: each
    request is answered (OK or INVALID_ARGUMENT naming the shrunk object), the server lives on.
    (Mapped regions died of SIGBUS here, with nothing in the log.)"""
    with region("/cnnzoo_sb_in", X.nbytes) as inputs, region("/cnnzoo_sb_out", LOGITS):
        shm.set_shared_memory_region(inputs, [X])
        client.register_system_shared_memory("sb_in", "/cnnzoo_sb_in", X.nbytes)
        client.register_system_shared_memory("sb_out", "/cnnzoo_sb_out", LOGITS)
        stop = threading.Event()

        def shrink() -> None:
            while not stop.is_set():
                for key, size in (("cnnzoo_sb_in", X.nbytes), ("cnnzoo_sb_out", LOGITS)):
                    os.truncate(f"/dev/shm/{key}", 64)
                    os.truncate(f"/dev/shm/{key}", size)

        shrinker = threading.Thread(target=shrink)
        shrinker.start()
        answers: dict[str, int] = {}
        try:
            for _ in range(300):
                inputs_, outputs = shm_request("sb_in", "sb_out")
                try:
                    client.infer(MODEL, inputs_, outputs=outputs, client_timeout=30)
                    answers["OK"] = answers.get("OK", 0) + 1
                except InferenceServerException as err:
                    assert err.status() == "StatusCode.INVALID_ARGUMENT", err.message()
                    assert "shrank" in err.message() or "beyond" in err.message(), err.message()
                    answers["shrank"] = answers.get("shrank", 0) + 1
        finally:
            stop.set()
            shrinker.join()
        assert answers.get("shrank", 0) > 0, answers  # the race was run
        assert server.proc.poll() is None, server.log()
        # Whole again: the same regions serve, and the answer is right.
        shm.set_shared_memory_region(inputs, [X])
        inputs_, outputs = shm_request("sb_in")
        result = client.infer(MODEL, inputs_, outputs=outputs)
        np.testing.assert_allclose(
            result.as_numpy("logits"),
            onnx_reference.run(["logits"], {"input": X})[0],
            rtol=1e-5,
            atol=1e-5,
        )


def test_an_object_whose_mode_forbids_writing_takes_inputs_only(client, onnx_reference):
    with region("/cnnzoo_ro", X.nbytes) as handle:
        shm.set_shared_memory_region(handle, [X])
        os.chmod("/dev/shm/cnnzoo_ro", 0o400)
        client.register_system_shared_memory("ro", "/cnnzoo_ro", X.nbytes)
        inputs, outputs = shm_request("ro")
        client.infer(MODEL, inputs, outputs=outputs)  # read: fine
        with region("/cnnzoo_ro_in", X.nbytes) as other:
            shm.set_shared_memory_region(other, [X])
            client.register_system_shared_memory("ro_in", "/cnnzoo_ro_in", X.nbytes)
            inputs, _ = shm_request("ro_in")
            output = triton.InferRequestedOutput("logits")
            output.set_shared_memory("ro", LOGITS)
            with pytest.raises(InferenceServerException, match="takes no outputs"):
                client.infer(MODEL, inputs, outputs=[output])


# -- a second user of the host --------------------------------------------------------------------


def as_user(uid: int, work: Callable[[], object]) -> object:
    """Run `work` in a forked child that has become `uid` (no exec: the child uses only the
    standard library); returns what it returned (JSON), or raises what it raised."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                document = {"result": work()}
            except Exception as err:  # the parent raises it
                document = {"error": f"{type(err).__name__}: {err}"}
            with os.fdopen(writer, "w") as out:
                json.dump(document, out)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as incoming:
        text = incoming.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text, text
    document = json.loads(text)
    if "error" in document:
        raise AssertionError(f"the second user's client failed: {document['error']}")
    return document["result"]


def rest(port: int, method: str, path: str, document: object | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps(document).encode() if document is not None else b""
        connection.request(method, path, body=body)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def infer_document(region_in: str, region_out: str | None) -> dict:
    shm_param = {"shared_memory_region": region_in, "shared_memory_byte_size": X.nbytes}
    output: dict = {"name": "logits"}
    if region_out is not None:
        output["parameters"] = {
            "shared_memory_region": region_out,
            "shared_memory_byte_size": LOGITS,
        }
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(X.shape), "parameters": shm_param}
        ],
        "outputs": [output],
    }


@as_root
def test_another_user_can_neither_register_nor_use_nor_drop_my_regions(server, client):
    port = server.http_port
    infer = f"/v2/models/{MODEL}/infer"
    with region("/cnnzoo_mine_in", X.nbytes) as mine_in, region("/cnnzoo_mine_out", LOGITS):
        shm.set_shared_memory_region(mine_in, [X])
        client.register_system_shared_memory("mine_in", "/cnnzoo_mine_in", X.nbytes)
        client.register_system_shared_memory("mine_out", "/cnnzoo_mine_out", LOGITS)
        before = Path("/dev/shm/cnnzoo_mine_out").read_bytes()

        def second_user() -> dict:
            seen = {}
            seen["status"] = rest(port, "GET", "/v2/systemsharedmemory/status")
            seen["steal"] = rest(
                port,
                "POST",
                "/v2/systemsharedmemory/region/stolen/register",
                {"key": "/cnnzoo_mine_out", "offset": 0, "byte_size": LOGITS},
            )
            seen["write_into_mine"] = rest(port, "POST", infer, infer_document("b_in", "mine_out"))
            seen["read_mine"] = rest(port, "POST", infer, infer_document("mine_in", None))
            seen["drop_all"] = rest(port, "POST", "/v2/systemsharedmemory/unregister")
            # its own object works as it should
            path = "/dev/shm/cnnzoo_theirs"
            with open(path, "wb") as handle:
                handle.write(X.tobytes() + bytes(LOGITS))
            try:
                seen["own"] = rest(
                    port,
                    "POST",
                    "/v2/systemsharedmemory/region/theirs/register",
                    {"key": "/cnnzoo_theirs", "offset": 0, "byte_size": X.nbytes + LOGITS},
                )
                document = infer_document("theirs", "theirs")
                document["outputs"][0]["parameters"]["shared_memory_offset"] = X.nbytes
                seen["own_infer"] = rest(port, "POST", infer, document)
                written = Path(path).read_bytes()[X.nbytes :]
                seen["own_output_written"] = written != bytes(LOGITS)
            finally:
                rest(port, "POST", "/v2/systemsharedmemory/unregister")
                os.unlink(path)
            return seen

        seen = as_user(NOBODY, second_user)
        assert seen["status"] == [200, []], seen  # my regions are not even listed
        code, answer = seen["steal"]
        assert code == 400 and "belongs to uid 0" in answer["error"], seen
        assert seen["write_into_mine"][0] == 404, seen  # b_in is not registered: NotFound first
        code, answer = seen["read_mine"]
        assert code == 404 and "'mine_in'" in answer["error"], seen
        assert seen["drop_all"][0] == 200
        assert seen["own"][0] == 200 and seen["own_infer"][0] == 200, seen
        assert seen["own_output_written"], seen
        # Mine are all still there and untouched.
        regions = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert set(regions) == {"mine_in", "mine_out"}
        assert Path("/dev/shm/cnnzoo_mine_out").read_bytes() == before


@as_root
def test_an_object_of_another_user_cannot_be_registered(client):
    path = Path("/dev/shm/cnnzoo_other_users")
    path.write_bytes(bytes(4096))
    try:
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(InferenceServerException) as info:
            client.register_system_shared_memory("theirs", "/cnnzoo_other_users", 4096)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"belongs to uid {NOBODY}, not to the caller" in info.value.message()
    finally:
        path.unlink()


# -- the rules on the registry, for callers the server cannot identify ----------------------------


def remote(host: str = "192.0.2.7") -> Caller:
    """A caller on another host (TEST-NET-1: no socket of this host has that address)."""
    return Caller(host, 40000, "0.0.0.0", 8001)


@contextlib.contextmanager
def calling_as(caller: Caller | None) -> Iterator[None]:
    token = CALLER.set(caller)
    try:
        yield
    finally:
        CALLER.reset(token)


def test_a_client_the_server_cannot_identify_needs_a_prefix(tmp_path):
    (tmp_path / "shared_x").write_bytes(bytes(256))
    (tmp_path / "other").write_bytes(bytes(256))
    plain = SystemSharedMemory(root=tmp_path)
    with calling_as(remote()), pytest.raises(InvalidInput, match="cannot tell which user"):
        plain.register("r", "/shared_x", 0, 256)

    prefixed = SystemSharedMemory(root=tmp_path, policy=SharedMemoryPolicy(prefix="/shared_"))
    with calling_as(remote()):
        with pytest.raises(InvalidInput, match="outside the prefix"):
            prefixed.register("r", "/other", 0, 256)
        prefixed.register("r", "/shared_x", 0, 256)
        assert [s.name for s in prefixed.status()] == ["r"]
        prefixed.view(SharedMemoryRef("r", 0, 16, output=True))[0:] = b"x" * 16
    assert (tmp_path / "shared_x").read_bytes()[:16] == b"x" * 16
    with calling_as(remote("192.0.2.8")):  # another client: not its region
        assert prefixed.status() == []
        with pytest.raises(NotFound):
            prefixed.view(SharedMemoryRef("r", 0, 16))
        prefixed.unregister()
    assert [s.name for s in prefixed.status()] == ["r"]  # the process sees every region
    prefixed.close()


def test_the_prefix_holds_for_every_client(tmp_path):
    with pytest.raises(InvalidInput, match="--shared-memory-prefix"):
        SharedMemoryPolicy(prefix="/a/b")
    (tmp_path / "x").write_bytes(bytes(64))
    registry = SystemSharedMemory(root=tmp_path, policy=SharedMemoryPolicy(prefix="cnnzoo_"))
    with pytest.raises(InvalidInput, match="outside the prefix this server allows"):
        registry.register("r", "/x", 0, 64)


def test_the_extension_can_be_turned_off(repository, tmp_path):
    server = ServerProcess(
        repository, tmp_path / "server.log", "--model", MODEL, "--shared-memory", "off"
    ).wait_ready()
    try:
        client = triton.InferenceServerClient(server.target)
        metadata = client.get_server_metadata(as_json=True)
        assert "system_shared_memory" not in metadata["extensions"]
        with region("/cnnzoo_off", X.nbytes):
            with pytest.raises(InferenceServerException) as info:
                client.register_system_shared_memory("off", "/cnnzoo_off", X.nbytes)
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            status, answer = rest(
                server.http_port,
                "POST",
                "/v2/systemsharedmemory/region/off/register",
                {"key": "/cnnzoo_off", "offset": 0, "byte_size": X.nbytes},
            )
            assert status == 503 and "does not offer system shared memory" in answer["error"]
        client.close()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("family", "host"), [("AF_INET", "127.0.0.1"), ("AF_INET6", "::1")])
def test_the_user_behind_a_local_connection_is_found(family, host):
    import socket

    from cnnzoo.serving.peers import caller_from_grpc_peer, socket_owner

    kind = getattr(socket, family)
    with socket.socket(kind) as listener:
        listener.bind((host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.socket(kind) as client:
            client.connect((host, port))
            accepted, peer = listener.accept()
            with accepted:
                assert socket_owner(peer[0], peer[1], host, port) == os.geteuid()
                assert socket_owner(peer[0], peer[1] ^ 1, host, port) is None  # no such socket
                grpc_peer = (
                    f"ipv4:{host}:{peer[1]}" if ":" not in host else f"ipv6:%5B{host}%5D:{peer[1]}"
                )
                caller = caller_from_grpc_peer(grpc_peer, "0.0.0.0", port)
                assert caller is not None and caller.uid() == os.geteuid()
                assert caller.identity() == ("uid", str(os.geteuid()))
    assert caller_from_grpc_peer("unix:/run/x.sock", "", 1) is None
    assert remote().uid() is None and remote().identity() == ("host", "192.0.2.7")
