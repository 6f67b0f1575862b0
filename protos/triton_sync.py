"""Write Triton's API definitions (`grpc_service.proto`, `model_config.proto`) from tritonclient.

cnnzoo and tritonclient must load into one Python process. Both register Triton's `inference.*`
messages in protobuf's default descriptor pool, which accepts a file twice only when the name and
the compiled definition are identical. So cnnzoo's copies carry Triton's file names and compile
to exactly the descriptors tritonclient's generated modules hold; this script writes them from
those descriptors (the one authoritative source a maintainer has installed), and
`tests/protos/test_triton_protos.py` checks the compiled result byte for byte.

Maintainers run it after moving the `tritonclient` pin, then `make protos`:

    python -m cnnzoo.protos.triton_sync   # rewrites protos/grpc_service.proto, model_config.proto
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTO_DIR = Path(__file__).resolve().parent

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _F.TYPE_DOUBLE: "double", _F.TYPE_FLOAT: "float", _F.TYPE_INT64: "int64",
    _F.TYPE_UINT64: "uint64", _F.TYPE_INT32: "int32", _F.TYPE_FIXED64: "fixed64",
    _F.TYPE_FIXED32: "fixed32", _F.TYPE_BOOL: "bool", _F.TYPE_STRING: "string",
    _F.TYPE_BYTES: "bytes", _F.TYPE_UINT32: "uint32", _F.TYPE_SFIXED32: "sfixed32",
    _F.TYPE_SFIXED64: "sfixed64", _F.TYPE_SINT32: "sint32", _F.TYPE_SINT64: "sint64",
}  # fmt: skip

_HEADER = """\
// {name}: NVIDIA Triton's {what}.
//
// Provenance: the definitions compiled into tritonclient=={version}'s generated modules
// (tritonclient.grpc.{module}), built from protobuf/{name} of
// triton-inference-server/common.
// Message, field and enum names, numbers and order are Triton's; do not edit by hand. Written
// by `python -m cnnzoo.protos.triton_sync`; tests/protos checks that it compiles to the
// same descriptor as tritonclient's, which is what lets both share a process.
"""


def _symbols(proto: descriptor_pb2.FileDescriptorProto) -> set[str]:
    """Every fully qualified message and enum name the file defines."""
    names: set[str] = set()

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        names.add(name)
        for enum in message.enum_type:
            names.add(f"{name}.{enum.name}")
        for nested in message.nested_type:
            walk(name, nested)

    package = f".{proto.package}"
    for enum in proto.enum_type:
        names.add(f"{package}.{enum.name}")
    for message in proto.message_type:
        walk(package, message)
    return names


class _Renderer:
    def __init__(self, proto: descriptor_pb2.FileDescriptorProto, known: set[str]) -> None:
        self.proto = proto
        self.known = known  # symbols of this file and its imports

    def type_ref(self, full: str, scope: str) -> str:
        """The shortest name that protoc resolves to `full` from inside `scope`."""
        parts = full.lstrip(".").split(".")
        scopes = []
        current = scope
        while current:
            scopes.append(current)
            current = current.rsplit(".", 1)[0] if "." in current.lstrip(".") else ""
        scopes.append("")
        for k in range(1, len(parts) + 1):
            candidate = parts[-k:]
            for outer in scopes:
                first = f"{outer}.{candidate[0]}"
                if first in self.known or any(s.startswith(first + ".") for s in self.known):
                    if f"{outer}.{'.'.join(candidate)}" == full:
                        return ".".join(candidate)
                    break  # protoc stops at the first scope that defines the first part
        return full

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto, scope: str) -> str:
        if field.type in _SCALARS:
            return _SCALARS[field.type]
        return self.type_ref(field.type_name, scope)

    def enum(self, enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
        lines = [f"{indent}enum {enum.name} {{"]
        lines += [f"{indent}  {v.name} = {v.number};" for v in enum.value]
        return lines + [f"{indent}}}"]

    def field(self, field, message, scope: str, indent: str) -> str:
        if field.options.ListFields():
            raise SystemExit(f"{scope}.{field.name}: field options are not supported here")
        if field.label == _F.LABEL_REPEATED:
            entry = next(
                (n for n in message.nested_type if field.type_name == f"{scope}.{n.name}"), None
            )
            if entry is not None and entry.options.map_entry:
                key, value = entry.field
                return (
                    f"{indent}map<{self.field_type(key, scope)}, {self.field_type(value, scope)}>"
                    f" {field.name} = {field.number};"
                )
            label = "repeated "
        else:
            label = "optional " if field.proto3_optional else ""
        return f"{indent}{label}{self.field_type(field, scope)} {field.name} = {field.number};"

    def message(self, message, prefix: str, indent: str) -> list[str]:
        scope = f"{prefix}.{message.name}"
        lines = [f"{indent}message {message.name} {{"]
        inner = indent + "  "
        for enum in message.enum_type:
            lines += self.enum(enum, inner)
        for nested in message.nested_type:
            if not nested.options.map_entry:
                lines += self.message(nested, scope, inner)
        emitted: set[int] = set()
        for field in message.field:
            if field.HasField("oneof_index") and not field.proto3_optional:
                index = field.oneof_index
                if index in emitted:
                    continue
                emitted.add(index)
                lines.append(f"{inner}oneof {message.oneof_decl[index].name} {{")
                lines += [
                    self.field(member, message, scope, inner + "  ")
                    for member in message.field
                    if member.HasField("oneof_index") and member.oneof_index == index
                ]
                lines.append(f"{inner}}}")
            else:
                lines.append(self.field(field, message, scope, inner))
        return lines + [f"{indent}}}"]

    def file(self) -> list[str]:
        proto, package = self.proto, f".{self.proto.package}"
        lines = [f'syntax = "{proto.syntax}";', "", f"package {proto.package};", ""]
        if proto.dependency:
            lines += [f'import "{dep}";' for dep in proto.dependency] + [""]
        for service in proto.service:
            lines.append(f"service {service.name} {{")
            for method in service.method:
                request = self.type_ref(method.input_type, package)
                response = self.type_ref(method.output_type, package)
                client = "stream " if method.client_streaming else ""
                server = "stream " if method.server_streaming else ""
                lines.append(
                    f"  rpc {method.name}({client}{request}) returns ({server}{response}) {{}}"
                )
            lines += ["}", ""]
        for enum in proto.enum_type:
            lines += self.enum(enum, "") + [""]
        for message in proto.message_type:
            lines += self.message(message, package, "") + [""]
        return lines


def render_all() -> dict[str, str]:
    """File name -> .proto text, for Triton's two files as tritonclient holds them."""
    from importlib.metadata import version

    from tritonclient.grpc import model_config_pb2, service_pb2

    sources = [
        (model_config_pb2, "model_config_pb2", "model configuration (config.pbtxt)"),
        (service_pb2, "service_pb2", "KServe v2 / Open Inference Protocol gRPC service"),
    ]
    protos = [
        (descriptor_pb2.FileDescriptorProto.FromString(m.DESCRIPTOR.serialized_pb), n, w)
        for m, n, w in sources
    ]
    known = set().union(*(_symbols(p) for p, _, _ in protos))
    out = {}
    for proto, module, what in protos:
        header = _HEADER.format(
            name=proto.name, what=what, version=version("tritonclient"), module=module
        )
        body = "\n".join(_Renderer(proto, known).file()).rstrip() + "\n"
        out[proto.name] = header + "\n" + body
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="folder to write into")
    args = parser.parse_args(argv)
    for name, text in render_all().items():
        path = args.out / name
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
