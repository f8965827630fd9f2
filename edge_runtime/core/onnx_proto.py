"""Just enough of protobuf's wire format to read an ONNX file's nodes and graph inputs without the onnx package.

Importing onnx costs about 0.8 s of the device's cold start, for one TreeEnsembleClassifier's attributes. This
reads the ModelProto bytes with the standard library only (and Python 3.8). Field numbers from onnx.proto:

  ModelProto       graph 7
  GraphProto       node 1 (NodeProto), input 11 (ValueInfoProto)
  NodeProto        op_type 4, domain 7, attribute 5 (AttributeProto)
  AttributeProto   name 1, f 2 (float), i 3 (int64), s 4 (bytes), floats 7, ints 8, strings 9, type 20
  ValueInfoProto   type 2 (TypeProto) -> tensor_type 1 -> shape 2 (TensorShapeProto) -> dim 1 -> dim_value 1

Everything else is skipped. As in protobuf, a repeated number may come packed (one length-delimited run) or
not (onnx.proto is proto2, so onnx.save writes one key per element), the last value of a scalar wins and the
occurrences of a message field merge (parsing their concatenation). Damaged bytes raise Malformed.
"""
import struct
from collections import namedtuple

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5
FLOAT, INT, STRING, FLOATS, INTS, STRINGS = 1, 2, 3, 6, 7, 8      # AttributeProto.AttributeType
TYPE_NAMES = {0: "UNDEFINED", 4: "TENSOR", 5: "GRAPH", 9: "TENSORS", 10: "GRAPHS", 11: "SPARSE_TENSOR",
              12: "SPARSE_TENSORS", 13: "TYPE_PROTO", 14: "TYPE_PROTOS"}

Node = namedtuple("Node", "op_type domain attributes types")   # {name: value}, {name: AttributeType}
Model = namedtuple("Model", "nodes input_dims")                  # one list of dim_value (0: none) per input


class Malformed(ValueError):
    """Bytes that are not the protobuf message they should be; str() is the reason."""


class Unsupported(ValueError):
    """An attribute of a type this reader does not decode (a tensor, a graph...); str() names it."""


def varint(buf, pos):
    """(value, next position) of the varint at buf[pos]: unsigned, 64 bits kept, as protobuf does."""
    value = shift = 0
    while shift < 70:
        if pos >= len(buf):
            raise Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise Malformed("varint longer than 10 bytes")


def fields(buf):
    """{field number: (wire types, values)} of one message, in file order: a bytearray of wire types and a
    list of values, an int for a varint, bytes for a fixed64, fixed32 or length-delimited field (no tuple
    per value: ints and bytes are not tracked by the garbage collector, so reading never wakes it)."""
    out = {}
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        if key < 0x80:                                     # the usual one-byte key
            pos += 1
        else:
            key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Malformed("field number 0")
        if wire == VARINT:
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = varint(buf, pos)
        else:
            if wire == BYTES:
                size, pos = varint(buf, pos)
            elif wire == FIXED32 or wire == FIXED64:
                size = 4 if wire == FIXED32 else 8
            else:
                raise Malformed(f"wire type {wire} (field {number})")
            if pos + size > end:
                raise Malformed(f"field {number} runs past the end of its message")
            value = buf[pos:pos + size]
            pos += size
        entry = out.get(number)
        if entry is None:
            entry = out[number] = (bytearray(), [])
        entry[0].append(wire)
        entry[1].append(value)
    return out


_ABSENT = (b"", ())


def _of(msg, number, wire, what):
    """The values of one field number, all of the one wire type it must have."""
    wires, values = msg.get(number, _ABSENT)
    if wires.count(wire) != len(wires):
        raise Malformed(f"{what} has wire type {next(w for w in wires if w != wire)}, not {wire}")
    return values


def message(msg, number, what):
    """The embedded message at `number` (its occurrences merged); {} when absent."""
    return fields(b"".join(_of(msg, number, BYTES, what)))


def messages(msg, number, what):
    return [fields(v) for v in _of(msg, number, BYTES, what)]


def string(msg, number, what, default=b""):
    values = _of(msg, number, BYTES, what)
    return values[-1] if values else default


def int64s(msg, number, what):
    """Repeated (or, last of them, single) int64: varints or packed runs of them, two's complement."""
    wires, values = msg.get(number, _ABSENT)
    if wires.count(VARINT) != len(wires):                 # some packed: unpack them, in order
        out = []
        for wire, value in zip(wires, values):
            if wire == VARINT:
                out.append(value)
            elif wire == BYTES:
                pos = 0
                while pos < len(value):
                    v, pos = varint(value, pos)
                    out.append(v)
            else:
                raise Malformed(f"{what} has wire type {wire}, not an int64")
        values = out
    return [v - (1 << 64) if v >> 63 else v for v in values]


def float32s(msg, number, what):
    """Repeated (or, last of them, single) float: fixed32 or packed runs of them, as Python floats."""
    wires, values = msg.get(number, _ABSENT)
    if wires.count(FIXED32) + wires.count(BYTES) != len(wires) or any(len(v) % 4 for v in values):
        raise Malformed(f"{what} is not float32")
    raw = b"".join(values)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def attribute(msg):
    """(name, type, value) of one AttributeProto, the value chosen by its type as
    onnx.helper.get_attribute_value does: float, int, bytes, or a list of them."""
    name = string(msg, 1, "attribute name").decode("utf-8", "replace")
    kind = (int64s(msg, 20, "attribute type") or [0])[-1]
    what = f"attribute {name}"
    if string(msg, 21, what):                              # ref_attr_name: only inside an ONNX function
        raise Unsupported(f"{what} refers to a function's attribute")
    if kind == FLOAT:
        return name, kind, (float32s(msg, 2, what) or [0.0])[-1]
    if kind == INT:
        return name, kind, (int64s(msg, 3, what) or [0])[-1]
    if kind == STRING:
        return name, kind, string(msg, 4, what)
    if kind == FLOATS:
        return name, kind, float32s(msg, 7, what)
    if kind == INTS:
        return name, kind, int64s(msg, 8, what)
    if kind == STRINGS:
        return name, kind, list(_of(msg, 9, BYTES, what))
    raise Unsupported(f"{what} is a {TYPE_NAMES.get(kind, f'type {kind}')}")


def read_model(data):
    """Model(nodes, input_dims) of serialized ModelProto bytes. Raises Malformed or Unsupported."""
    graph = message(fields(data), 7, "graph")
    nodes = []
    for node in messages(graph, 1, "node"):
        attributes, types = {}, {}
        for name, kind, value in (attribute(a) for a in messages(node, 5, "node attribute")):
            attributes[name], types[name] = value, kind
        nodes.append(Node(string(node, 4, "op_type").decode("utf-8", "replace"),
                          string(node, 7, "domain").decode("utf-8", "replace"), attributes, types))
    input_dims = []
    for value_info in messages(graph, 11, "graph input"):
        shape = message(message(message(value_info, 2, "input type"), 1, "tensor type"), 2, "tensor shape")
        input_dims.append([(int64s(dim, 1, "dim_value") or [0])[-1]
                           for dim in messages(shape, 1, "dim")])
    return Model(nodes, input_dims)
