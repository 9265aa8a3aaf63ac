"""Parsing protobuf messages with typed errors and spotting fields we do not know."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from lance_assets.errors import CorruptFileError

M = TypeVar("M", bound=Message)


def parse(cls: type[M], data: bytes, *, path: str | None, what: str) -> M:
    """Parse ``data`` as ``cls``; any decode failure becomes CorruptFileError.

    Unknown fields are kept on the message (proto3 semantics), so a message
    written by a newer Lance survives a read-modify-write unchanged.
    """
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise CorruptFileError(f"{what} does not parse ({exc})", path=path) from None
    return msg


def unknown_field_numbers(msg: Message) -> list[int]:
    """Tag numbers present on ``msg`` itself that our .proto files do not define."""
    fields = UnknownFieldSet(msg)
    return sorted({fields[i].field_number for i in range(len(fields))})


def has_unknown_fields(msg: Message) -> bool:
    """Whether ``msg`` or any message inside it holds fields our .proto files do not define.

    One pass in C (copy, drop unknown fields, compare sizes): far cheaper than
    ``unknown_field_numbers`` on each of 100,000 nested messages.
    """
    probe = type(msg)()
    probe.CopyFrom(msg)
    probe.DiscardUnknownFields()
    return probe.ByteSize() != msg.ByteSize()


def wire_fields(data: bytes) -> list[tuple[int, int, bytes | int]] | None:
    """Top-level (field number, wire type, value) of a serialized message we have no .proto for;
    None when the bytes are not a well-formed message. Length-delimited values stay bytes."""
    fields: list[tuple[int, int, bytes | int]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        result = shift = 0
        while True:
            if i >= len(data) or shift > 63:
                raise ValueError
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    try:
        while i < len(data):
            key = varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                fields.append((number, wire, varint()))
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if i + width > len(data):
                    return None
                fields.append((number, wire, data[i : i + width]))
                i += width
            elif wire == 2:
                size = varint()
                if i + size > len(data):
                    return None
                fields.append((number, wire, data[i : i + size]))
                i += size
            else:
                return None
    except ValueError:
        return None
    return fields


def varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint (for fields written by hand, like ones our
    protos do not define)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
