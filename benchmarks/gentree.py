"""Write or change a benchmark file tree; runs inside a lab host on a volume's mountpoint.

Usage: gentree.py ROOT KIND SPEC_JSON. It is a standalone script (standard library only),
because it runs in the host's namespaces with `python3`, not in the controller's process.
KIND is "single" (one file of random data), "small-files" (many equal files in many
directories), "mixed" (log-normal sizes), "change" (change, add and remove a share of the
files of an existing tree) or "text" (log files of timestamped lines). Sizes and counts come from SPEC_JSON; the seed makes every tree
reproducible. Prints one JSON line: files written, bytes written, files removed.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys

BLOCK = 1024 * 1024
WORDS = b"volume container image mountpoint archive manifest checksum host key relay "


def write_content(path: str, size: int, rng: random.Random, compressible: bool) -> None:
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            count = min(BLOCK, left)
            if compressible:
                # Text-like data: compresses about 4 to 8 times with lz4 or zstd.
                start = rng.randrange(len(WORDS))
                block = (WORDS[start:] + WORDS * (count // len(WORDS) + 2))[:count]
                noise = os.urandom(max(1, count // 16))
                block = block[: count - len(noise)] + noise
            else:
                block = os.urandom(count)
            handle.write(block)
            left -= count


def single(root: str, spec: dict, rng: random.Random) -> dict:
    write_content(os.path.join(root, "random.bin"), spec["bytes"], rng, False)
    return {"files": 1, "bytes": spec["bytes"], "removed": 0}


def small_files(root: str, spec: dict, rng: random.Random) -> dict:
    files, dirs, size = spec["files"], spec["dirs"], spec["file_bytes"]
    for index in range(files):
        directory = os.path.join(root, f"d{index % dirs:04d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{index:06d}"), "wb") as handle:
            handle.write(os.urandom(size))
    return {"files": files, "bytes": files * size, "removed": 0}


def mixed_sizes(spec: dict, rng: random.Random) -> list[int]:
    mu = math.log(spec["median_bytes"])
    sizes = [
        min(int(rng.lognormvariate(mu, spec["sigma"])), spec["cap_bytes"])
        for _ in range(spec["files"] - len(spec["large_bytes"]))
    ]
    return sizes + list(spec["large_bytes"])


def mixed(root: str, spec: dict, rng: random.Random) -> dict:
    sizes = mixed_sizes(spec, rng)
    total = 0
    for index, size in enumerate(sizes):
        directory = os.path.join(root, f"d{index % spec['dirs']:03d}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"f{index:06d}.dat")
        write_content(path, size, rng, compressible=index % 2 == 0)
        total += size
    return {"files": len(sizes), "bytes": total, "removed": 0}


def change(root: str, spec: dict, rng: random.Random) -> dict:
    """Rewrite, add and remove files so that spec["share"] of the files change."""
    paths = sorted(
        os.path.join(directory, name)
        for directory, _, names in os.walk(root)
        for name in names
    )
    count = max(3, int(len(paths) * spec["share"]))
    chosen = rng.sample(paths, count)
    rewritten, removed = chosen[: count * 7 // 10], chosen[count * 7 // 10 : count * 85 // 100]
    added = count - len(rewritten) - len(removed)

    total = 0
    for path in rewritten:
        size = os.path.getsize(path)
        write_content(path, size, rng, compressible=False)
        total += size
    for path in removed:
        os.unlink(path)
    for index in range(added):
        size = int(rng.lognormvariate(math.log(spec["median_bytes"]), 1.0))
        write_content(os.path.join(root, f"added-{index:05d}.dat"), size, rng, False)
        total += size
    return {"files": len(rewritten) + added, "bytes": total, "removed": len(removed)}


def log_lines(size: int, rng: random.Random, vocabulary: list[str]) -> bytes:
    """Return `size` bytes of log lines: timestamps, levels, ids and words from `vocabulary`.

    zstd -1 shrinks this to about 40% and lz4 -1 to about 66% (measured on 64 MiB), closer
    to real logs and JSON than the repeated words of write_content.
    """
    lines = []
    length = 0
    moment = 1_700_000_000.0
    while length < size:
        moment += rng.expovariate(50)
        words = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(4, 14)))
        line = (f"{moment:.6f} {rng.choice(('INFO', 'DEBUG', 'WARN', 'ERROR'))} "
                f"pid={rng.randint(1, 65535)} req={rng.getrandbits(32):08x} {words}\n")
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()[:size]


def text(root: str, spec: dict, rng: random.Random) -> dict:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(2000)]
    per_file = spec["bytes"] // spec["files"]
    for index in range(spec["files"]):
        with open(os.path.join(root, f"app-{index:03d}.log"), "wb") as handle:
            left = per_file
            while left > 0:
                block = log_lines(min(BLOCK * 4, left), rng, vocabulary)
                handle.write(block)
                left -= len(block)
    return {"files": spec["files"], "bytes": per_file * spec["files"], "removed": 0}


KINDS = {"single": single, "small-files": small_files, "mixed": mixed, "change": change,
         "text": text}


def main() -> None:
    root, kind, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rng = random.Random(spec.get("seed", 1))
    result = KINDS[kind](root, spec, rng)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
