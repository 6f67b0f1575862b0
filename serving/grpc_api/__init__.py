"""The gRPC transport: protobuf codecs, status mapping and the servicers."""
