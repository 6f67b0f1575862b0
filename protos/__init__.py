"""Generated protobuf and gRPC modules; regenerate with `make protos` (python -m protos.codegen)."""
