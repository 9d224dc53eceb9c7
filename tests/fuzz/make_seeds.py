#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_safetensors_header into corpus/ (pure Python, no torch).

Each seed exists in both input modes of the target: raw (byte 0 even, then a whole file) and
structured (byte 0 odd, 2-byte LE data length, then the JSON header)."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
         "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def header(tensors, metadata=None):
    """tensors: list of (name, dtype, shape). Offsets assigned in the given order."""
    h, off = {}, 0
    if metadata is not None:
        h["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = SIZES[dt]
        for d in shape:
            n *= d
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(h, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return text, off


SEEDS = {
    "spec_vector": header([("a", "F32", [2])], {"format": "pt"}),
    "empty": header([]),
    "metadata_only": header([], {"format": "pt", "ss_network_dim": "4", "json": "{\"a\": [1, 2]}"}),
    "every_dtype": header([(f"t_{dt}", dt, [2, 1]) for dt in sorted(SIZES, key=lambda d: -SIZES[d])]),
    "scalar_and_empty": header([("scalar", "F64", []), ("empty", "F32", [0, 3]), ("v", "U8", [3])]),
    "unet_like": header([("down.0.weight", "F32", [4, 3, 3, 3]), ("down.0.bias", "F32", [4]),
                         ("timestep", "I64", [2]), ("mask", "BOOL", [5])], {"format": "pt"}),
}

os.makedirs(os.path.join(HERE, "corpus"), exist_ok=True)
for name, (text, data_len) in SEEDS.items():
    raw = b"\x00" + struct.pack("<Q", len(text)) + text + bytes(data_len)
    structured = b"\x01" + struct.pack("<H", data_len) + text
    with open(os.path.join(HERE, "corpus", f"raw_{name}"), "wb") as f:
        f.write(raw)
    with open(os.path.join(HERE, "corpus", f"json_{name}"), "wb") as f:
        f.write(structured)
