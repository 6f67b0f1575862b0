"""A model's ModelConfig message as the JSON document Triton's `/config` endpoint returns.

protobuf's JSON mapping writes 64-bit integers as strings; Triton's writes them as numbers
(`"dims": [1, 32, 32]`), and clients read them as numbers, so they are converted back, field by
field from the message's descriptor.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, json_format

__all__ = ["model_config_to_json"]

_INT64 = {
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_SINT64,
    descriptor.FieldDescriptor.TYPE_FIXED64,
    descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def model_config_to_json(config: Any) -> dict[str, Any]:
    """`config` (a model_config_pb2.ModelConfig) with Triton's field names and numbers."""
    document = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return _numbers(config.DESCRIPTOR, document)


def _numbers(message: descriptor.Descriptor, document: dict[str, Any]) -> dict[str, Any]:
    for name, value in document.items():
        field = message.fields_by_name.get(name)
        if field is not None:
            document[name] = _field(field, value)
    return document


def _field(field: descriptor.FieldDescriptor, value: Any) -> Any:
    kind = field.message_type
    if kind is not None and kind.GetOptions().map_entry:
        entry = kind.fields_by_name["value"]
        return {key: _scalar_or_message(entry, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scalar_or_message(field, item) for item in value]
    return _scalar_or_message(field, value)


def _scalar_or_message(field: descriptor.FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return _numbers(field.message_type, value) if isinstance(value, dict) else value
    if field.type in _INT64 and isinstance(value, str):
        return int(value)
    return value
