"""serving: a KServe v2 gRPC server on ONNX Runtime for a cnnzoo model repository.

Layers, each with one job (nothing below the servicers touches protobuf):

- `runtime`        ONNX Runtime sessions: `--device auto|cuda|cpu`, threads, warm-up.
- `batcher`        dynamic batching of concurrent requests, one thread per model instance.
- `model_manager`  the repository's models: integrity checks, loading, lookup, hot reload.
- `images`         uploaded PNG/JPEG bytes to one input batch (`zoo.images` + `Preprocess`).
- `dataplane`      live/ready/metadata/infer/classify/explain, transport-neutral.
- `explain`        the one bridge to `cnnzoo.interpret.explain`.
- `metrics`        Prometheus `/metrics` with Triton's metric names.
- `grpc_api`       protobuf codecs, error-to-status mapping, thin servicers.
- `server`         assembly: health, reflection, metrics, polling, graceful SIGTERM.
- `client`         a small client for `cnnzoo classify` and `cnnzoo health`.
"""
