"""serving: a KServe v2 gRPC and REST server on ONNX Runtime for a cnnzoo model repository.

Layers, each with one job, from the bottom up (`.importlinter`'s `serving` contract; nothing
below the front ends loads gRPC, aiohttp or protobuf):

- `types`, `spec`, `limits`, `latency`  plain requests and answers, a model's interface, bounds.
- `tensors`        the protocol's tensor codec (checks, raw and BYTES data, classification
                   strings) and `RowLayout`: requests as batcher rows, rows as graph input.
- `stats`          per-version counters (Triton's statistics).
- `runtime`        ONNX Runtime sessions: `--device auto|cuda|cpu`, threads, warm-up.
- `batcher`        dynamic batching of concurrent requests, one thread per model instance.
- `images`         uploaded PNG/JPEG bytes to one input batch (`zoo.images` + `Preprocess`).
- `version`        one model version: what a served version holds and how one is loaded.
- `model_manager`  which version of each model serves: lookup, model control, hot reload.
- `admission`      the frame of each inference, Classify and Explain call: limits, in-flight
                   counts, the deadline, statistics.
- `explain`        the one bridge to `cnnzoo.interpret.explain`.
- `dataplane`      live/ready/metadata/infer/classify/explain, transport-neutral.
- `grpc_api`, `http_api`, `metrics`  the front ends: gRPC (codecs, status mapping, thin
                   servicers), KServe v2 REST, Prometheus `/metrics` with Triton's names.
- `server`         assembly: one step per port, health, reflection, polling, graceful SIGTERM.
- `client`         a small client for `cnnzoo classify` and `cnnzoo health`.

`docs/contributing-serving.md` walks through the layout and adding an RPC.
"""
