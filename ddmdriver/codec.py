"""Compression of the host data path's tar stream with the zstd or lz4 command-line tools.

The source host pipes its GNU tar archive through the codec's compressor, this process
forwards the compressed bytes unchanged to the target, and the target pipes them through
the decompressor into `tar --extract`. This process also decodes a copy of the stream with
the codec's PyPI package (zstandard or lz4), only to hash the tar stream and build the
source manifest as it does for an uncompressed copy.

Both CLIs write a frame checksum by default (zstd 1.5 adds XXH64 of the content, lz4 1.9 a
content checksum), so a corrupted stream fails in the decoder here and on the target.

Each remote pipeline is one `sh -c SCRIPT NAME TAR-ARGV...` command: tar's argv is passed
as positional parameters, never pasted into the script, and the script reports the exit
status of both processes (POSIX sh has no pipefail). Scripts are one line, because the SSH
layer rejects control characters in command arguments.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import Any, Protocol

from ddm.errors import DDMError, TransferFailed

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 30.0
CODEC_NAMES = ("zstd", "lz4")

# The source script runs tar ("$@") into the compressor. Command substitution captures
# tar's exit status through file descriptor 4 while the compressed bytes go to the
# original stdout (descriptor 3). The script exits with tar's status, so GNU tar's
# status 1 ("file changed as we read it") keeps its meaning, or with 2 when the
# compressor failed.
_COMPRESS_SCRIPT = "; ".join([
    "exec 3>&1",
    'tar_status=$( { { "$@"; echo $? >&4; } | {codec} >&3 4>&-; } 4>&1 )',
    "codec_status=$?",
    'if [ "$codec_status" -ne 0 ]; then echo "ddm: {name} failed with exit status '
    '$codec_status" >&2; exit 2; fi',
    'exit "${tar_status:-2}"',
])

# The target script runs the decompressor into tar ("$@"). A failure of tar is reported
# first, because a decompressor that tar stopped reading from fails with SIGPIPE.
_DECOMPRESS_SCRIPT = "; ".join([
    "exec 3>&1",
    'codec_status=$( { { {codec}; echo $? >&4; } | "$@" >&3 4>&-; } 4>&1 )',
    "tar_status=$?",
    'if [ "$tar_status" -ne 0 ]; then exit "$tar_status"; fi',
    'if [ "${codec_status:-2}" -ne 0 ]; then echo "ddm: {name} -d failed with exit status '
    '${codec_status:-unknown}" >&2; exit 2; fi',
    "exit 0",
])

class StreamDecoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """A compression tool and level, as used on both hosts and decoded here."""

    name: str  # "zstd" or "lz4": the command and the Debian package
    level: int

    @property
    def label(self) -> str:
        return f"{self.name}-{self.level}"

    def compress_argv(self) -> list[str]:
        return [self.name, "-q", "-c", f"-{self.level}"]

    def decompress_argv(self) -> list[str]:
        return [self.name, "-d", "-q", "-c"]

    def to_dict(self) -> dict[str, Any]:
        return {"codec": self.name, "level": self.level}


# Levels chosen by measurement (docs/benchmarks.md, section "Compression"; 64 MiB of
# log-like text on a 2-core AMD EPYC VM): zstd -3 reached ratio 0.35 at 158 MiB/s, zstd -1
# 0.40 at 264 MiB/s, lz4 -1 0.66 at 334 MiB/s. A copy compressed with zstd -3 is the fastest
# of the three on links up to about 500 Mbit/s, the range where compression pays most.
# Auto also samples zstd -1 and lz4 -1, which its model prefers on faster links.
DEFAULT_CODECS = {"zstd": Codec("zstd", 3), "lz4": Codec("lz4", 1)}
AUTO_CANDIDATES = (Codec("zstd", 3), Codec("zstd", 1), Codec("lz4", 1))


def compressing_argv(prefix: tuple[str, ...], tar_argv: list[str], codec: Codec) -> list[str]:
    """Return the source command: `tar_argv` (without `prefix`) piped through the compressor."""
    script = _COMPRESS_SCRIPT.replace("{codec}", shlex.join(codec.compress_argv()))
    script = script.replace("{name}", codec.name)
    return [*prefix, "sh", "-c", script, "ddm-compress", *tar_argv[len(prefix):]]


def decompressing_argv(prefix: tuple[str, ...], tar_argv: list[str], codec: Codec) -> list[str]:
    """Return the target command: the decompressor piped into `tar_argv` (without `prefix`)."""
    script = _DECOMPRESS_SCRIPT.replace("{codec}", shlex.join(codec.decompress_argv()))
    script = script.replace("{name}", codec.name)
    return [*prefix, "sh", "-c", script, "ddm-decompress", *tar_argv[len(prefix):]]


class StreamDecompressor:
    """Decodes a copy of a compressed stream with the codec's PyPI package, chunk by chunk."""

    def __init__(self, codec: Codec, description: str) -> None:
        self.codec = codec
        self.description = description
        self.wire_bytes = 0
        self._decoder = _new_decoder(codec)

    def decode(self, chunk: bytes) -> bytes:
        """Return the tar bytes that `chunk` completes; raise TransferFailed on corrupt data."""
        self.wire_bytes += len(chunk)
        try:
            return self._decoder.decompress(chunk)
        except Exception as error:  # zstandard.ZstdError and lz4's RuntimeError share no base
            raise TransferFailed(f"the {self.codec.name} stream from {self.description} is "
                                 f"corrupt after {self.wire_bytes} compressed bytes: {error}",
                                 hint="the target was left as it was; check the source host's "
                                 f"{self.codec.name} and retry, or use --compress none") from None

    def finish(self) -> None:
        """Raise TransferFailed when the stream ended before its last frame was complete."""
        if not getattr(self._decoder, "eof", False):
            raise TransferFailed(f"the {self.codec.name} stream from {self.description} ended "
                                 f"early after {self.wire_bytes} compressed bytes",
                                 hint="the target was left as it was; retry, or use "
                                 "--compress none")


def _new_decoder(codec: Codec) -> StreamDecoder:
    if codec.name == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if codec.name == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor()
    raise ValueError(f"unknown codec {codec.name!r}")


def probe_codecs(ssh: Any, prefix: tuple[str, ...]) -> frozenset[str]:
    """Return the codec commands (zstd, lz4) found on the host's PATH; empty when the probe fails."""
    script = 'for name in "$@"; do command -v "$name" >/dev/null 2>&1 && echo "$name"; done; exit 0'
    try:
        result = ssh.exec_command([*prefix, "sh", "-c", script, "ddm-probe", *CODEC_NAMES],
                                  timeout=PROBE_TIMEOUT_SECONDS)
    except (DDMError, ValueError, OSError) as error:
        logger.warning("probing for %s failed: %s", " and ".join(CODEC_NAMES), error)
        return frozenset()
    found = {line.strip().decode("ascii", "replace") for line in result.stdout.splitlines()}
    return frozenset(found & set(CODEC_NAMES))
