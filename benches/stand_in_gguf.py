"""A stand-in for a real GGUF model, small enough to carry compressed: the real file's metadata
(architecture, tokenizer, chat template) and tensor names and shapes, every matrix Q8_0 with
random blocks drawn from a pool of 4,099 (a prime, so rows never line up with the pool) and
repeated — xz turns the 0.5 GB file into about a megabyte —, norms 1 and biases 0. Its answers
are nonsense of the real length and cost: what a benchmark of serving mechanics (the swap
pause on a GPU machine) needs when the real weights cannot travel.

python3 benches/stand_in_gguf.py REAL.gguf OUT.gguf     (needs `pip install gguf numpy`)
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

POOL = 4099
BLOCK = 32


def q8_0_blocks(count, rng_pool):
    reps = -(-count // POOL)
    return np.tile(rng_pool, (reps, 1))[:count]


def main():
    source, target = sys.argv[1], sys.argv[2]
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(target, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    rng = np.random.default_rng(0)
    # One pool of Q8_0 blocks: an f16 scale (values of about 0.02 standard deviation) and 32
    # signed bytes.
    scale = np.full((POOL, 1), 0.02 / 73.0, dtype=np.float16).view(np.uint8)
    values = rng.integers(-127, 128, size=(POOL, BLOCK), dtype=np.int8).view(np.uint8)
    pool = np.concatenate([scale, values], axis=1)
    for tensor in reader.tensors:
        shape = [int(d) for d in tensor.shape]  # GGML order: row length first
        name = tensor.name
        if len(shape) == 2 and shape[0] % BLOCK == 0:
            rows, cols = shape[1], shape[0]
            blocks = q8_0_blocks(rows * cols // BLOCK, pool).reshape(rows, cols // BLOCK * 34)
            writer.add_tensor(name, blocks, raw_shape=(rows, cols // BLOCK * 34),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            fill = 0.0 if name.endswith(".bias") else 1.0
            writer.add_tensor(name, np.full(list(reversed(shape)), fill, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{target}: {len(reader.tensors)} tensors of {arch}, stand-in weights", file=sys.stderr)


if __name__ == "__main__":
    main()
