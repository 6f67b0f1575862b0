"""The floor for serving overhead: a bare grpc.aio KServe v2 server around one ONNX Runtime session.

It answers what perf_analyzer asks (ServerLive/Ready, ModelReady, ModelMetadata, ModelConfig,
ModelStatistics) and runs ModelInfer on the event loop itself with the same session `cnnzoo serve`
builds (`OnnxModel`, same threads and warm-up), without validation, batching, deadlines,
statistics or metrics. What cnnzoo costs on top of it is the price of those features.
ModelStreamInfer answers each request of a stream in turn, the same way: what grpc.aio's
streaming itself allows.

    python bench/bare_server.py model_repository/lenet5-mnist --port 9001 [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnzoo.protos import grpc_service_pb2 as pb  # noqa: E402
from cnnzoo.protos import grpc_service_pb2_grpc, model_config_pb2  # noqa: E402
from cnnzoo.serving.runtime import OnnxModel, RuntimeOptions, warm_up_sizes  # noqa: E402


class BareServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, folder: Path, device: str, intra_op_threads: int) -> None:
        self.config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        self.session = OnnxModel(
            folder / "1" / "model.onnx",
            RuntimeOptions(device=device, intra_op_threads=intra_op_threads),
        )
        dims = tuple(self.config.input[0].dims)
        self.session.warm_up(dims, warm_up_sizes(self.config.max_batch_size))
        self.name = self.config.name
        tensor = pb.ModelMetadataResponse.TensorMetadata
        self.metadata = pb.ModelMetadataResponse(
            name=self.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=self.session.input_name, datatype="FP32", shape=[-1, *dims])],
            outputs=[
                tensor(
                    name=self.session.output_name,
                    datatype="FP32",
                    shape=[-1, *self.config.output[0].dims],
                )
            ],
        )

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="bare", version="0")

    async def ModelMetadata(self, request, context):
        return self.metadata

    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.config)

    async def ModelStatistics(self, request, context):
        return pb.ModelStatisticsResponse(
            model_stats=[pb.ModelStatistics(name=self.name, version="1")]
        )

    async def ModelInfer(self, request, context):
        shape = list(request.inputs[0].shape)
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(shape)
        y = self.session.run(x)
        output = pb.ModelInferResponse.InferOutputTensor(
            name=self.session.output_name, datatype="FP32", shape=y.shape
        )
        return pb.ModelInferResponse(
            model_name=self.name,
            model_version="1",
            id=request.id,
            outputs=[output],
            raw_output_contents=[y.tobytes()],
        )

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            response = await self.ModelInfer(request, context)
            yield pb.ModelStreamInferResponse(infer_response=response)


async def serve(folder: Path, host: str, port: int, device: str, intra_op_threads: int) -> None:
    limit = 64 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = BareServicer(folder, device, intra_op_threads)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"serving on {host}:{bound}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model folder of a repository (version 1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.model, args.host, args.port, args.device, args.intra_op_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
