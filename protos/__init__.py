"""Protobuf and gRPC modules: Triton's API (`grpc_service`, `model_config`) and cnnzoo's (`zoo`).

The generated `*_pb2*` files are committed; regenerate with `make protos`.
"""
