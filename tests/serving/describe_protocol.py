"""Print a protobuf file's messages, fields and RPCs as JSON (run as a script, one per process).

`python describe_protocol.py ours` describes `protos/inference.proto`; `... triton` describes
tritonclient's generated `grpc_service.proto`. The two register the same `inference.*` message
names, so they cannot be imported into one process: the test runs this twice and compares.
"""

from __future__ import annotations

import json
import sys


def describe(file_descriptor) -> dict:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)

    def fields(message, prefix: str, out: dict) -> None:
        name = f"{prefix}.{message.name}"
        oneofs = [o.name for o in message.oneof_decl]
        out[name] = sorted(
            (
                f.name,
                f.number,
                f.type,
                f.label,
                f.type_name,
                oneofs[f.oneof_index] if f.HasField("oneof_index") else "",
            )
            for f in message.field
        )
        for nested in message.nested_type:
            fields(nested, name, out)

    messages: dict = {}
    for message in proto.message_type:
        fields(message, f".{proto.package}", messages)
    rpcs = {
        m.name: [m.input_type, m.output_type, m.client_streaming, m.server_streaming]
        for service in proto.service
        for m in service.method
    }
    return {"package": proto.package, "messages": messages, "rpcs": rpcs}


def main(which: str) -> None:
    if which == "ours":
        from protos import inference_pb2 as module
    else:
        from tritonclient.grpc import service_pb2 as module
    json.dump(describe(module.DESCRIPTOR), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
