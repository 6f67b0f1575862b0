"""ModelStreamInfer: any number of inference requests on one bidirectional stream.

Triton's semantics for models that answer each request once (every cnnzoo model): each request
is answered on the stream, in the order the requests came, with its `id`, so a client can match
answers to requests; a request that fails is answered with `error_message` (and its id, model
name and version) and the stream carries on. The stream's deadline applies to every request on
it, as does a request's own `timeout` parameter; requests from all streams and unary calls share
each model's dynamic batcher. When the client cancels the stream, its deadline passes or its
connection dies, grpc cancels the handler and the requests still queued leave the batcher
without running.

At most `MAX_IN_FLIGHT` requests of one stream are in the server at a time; beyond that the
server stops reading the stream until answers have been written, and HTTP/2 flow control holds
the client back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeAlias

import grpc

from cnnzoo.errors import CnnzooError
from cnnzoo.protos import grpc_service_pb2
from cnnzoo.serving.dataplane import DataPlane
from cnnzoo.serving.grpc_api import codec

__all__ = ["MAX_IN_FLIGHT", "stream_infer"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 256

_Answer = asyncio.Future[grpc_service_pb2.ModelStreamInferResponse]
_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


async def stream_infer(plane: DataPlane, context: _Context, deadline: float | None) -> None:
    """Serve one ModelStreamInfer call: read requests, write their answers in order."""
    answers: asyncio.Queue[_Answer | None] = asyncio.Queue()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    reader = asyncio.ensure_future(_read(plane, context, deadline, answers, slots))
    try:
        while (answer := await answers.get()) is not None:
            await context.write(await answer)
            slots.release()
        await reader  # its failure, if any, ends the call
    finally:
        reader.cancel()
        while not answers.empty():
            pending = answers.get_nowait()
            if pending is not None:
                pending.cancel()  # a request still queued leaves its batcher unrun


async def _read(
    plane: DataPlane,
    context: _Context,
    deadline: float | None,
    answers: asyncio.Queue[_Answer | None],
    slots: asyncio.Semaphore,
) -> None:
    try:
        while True:
            await slots.acquire()
            request = await context.read()
            if request is grpc.aio.EOF:  # type: ignore[attr-defined]  # not in grpc's stubs
                return
            answers.put_nowait(asyncio.ensure_future(_answer(plane, request, deadline)))
    finally:
        answers.put_nowait(None)


async def _answer(
    plane: DataPlane, request: grpc_service_pb2.ModelInferRequest, deadline: float | None
) -> grpc_service_pb2.ModelStreamInferResponse:
    try:
        result = await plane.infer(codec.infer_request_from_pb(request), deadline=deadline)
    except CnnzooError as err:
        message = err.reason
    except Exception:
        log.exception("a ModelStreamInfer request failed")
        message = "the request failed inside the server; the server log has the details"
    else:
        response = codec.infer_response_to_pb(result)
        response.parameters["triton_final_response"].bool_param = True
        return grpc_service_pb2.ModelStreamInferResponse(infer_response=response)
    return grpc_service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=grpc_service_pb2.ModelInferResponse(
            id=request.id, model_name=request.model_name, model_version=request.model_version
        ),
    )
