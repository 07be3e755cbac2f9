"""Send only the image layers the target lacks: filter a `docker save` stream on its way.

`docker load` (POST /images/load) looks each layer of an image up by its chain ID first. It
reads the layer's tar file from the archive only when the layer is missing, as moby's
image/tarexport/load.go does in Docker 23 (read) and 20.10 (the lab's engine, tried). So a
layer whose chain ID the target already has can be left out of the stream, and the image loads
as before.

Which member of the stream is which layer? Docker before 25 writes the legacy layout: one
directory per layer, named by its v1 ID, with `json`, `VERSION` and `layer.tar`, and the
manifest that maps layers to directories comes last. The v1 ID is the SHA-256 of the
directory's `json` with the layer's chain ID added (moby's image/v1 CreateID), and `json`
comes before `layer.tar` in the stream. So for each directory the filter tries the chain IDs
of the image's layers and drops `layer.tar` only when one matches exactly and the target has
that chain. When nothing matches, every byte is sent: for example with the OCI layout
(`blobs/sha256/...`) that `docker save` writes since Docker 25, or with JSON that this module
serializes differently from Go.

The source still sends the whole stream to the controller; only the controller-to-target leg
is spared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ddm.errors import TransferFailed
from ddmdriver.images import image_inspect

logger = logging.getLogger(__name__)

BLOCK = 512
MAX_METADATA_BYTES = 1024 * 1024  # larger `json` members pass unread; larger extended headers fail
LAYER_DIRECTORY = re.compile(r"^([0-9a-f]{64})/(json|layer\.tar)$")
EXTENDED_TYPES = (b"x", b"g", b"L", b"K")
MAX_TARGET_IMAGES = 2000


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Return the chain ID of each layer prefix, from the image's RootFS diff IDs."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
            continue
        digest = hashlib.sha256(f"{chains[-1]} {diff_id}".encode("ascii")).hexdigest()
        chains.append(f"sha256:{digest}")
    return chains


def target_chain_ids(engine: Any) -> set[str]:
    """Return the chain IDs of every layer prefix of every image on an engine.

    One inspect per image. Only the first MAX_TARGET_IMAGES images are read, which can only
    mean more bytes sent, never a missing layer.
    """
    with engine._errors("listing images"):
        summaries = engine.api.images(all=True)
    present: set[str] = set()
    for summary in summaries[:MAX_TARGET_IMAGES]:
        inspect = image_inspect(engine, summary["Id"]) or {}
        present.update(chain_ids((inspect.get("RootFS") or {}).get("Layers") or []))
    return present


def v1_id(json_bytes: bytes, chain_id: str, *, with_os: bool) -> str | None:
    """Return the v1 ID that `docker save` gives a layer directory with this `json` and chain ID.

    Docker sets "os" on lower layers only after computing their ID, so both variants are tried
    by the caller. None when the JSON cannot be read.
    """
    try:
        config = json.loads(json_bytes)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None

    config.pop("id", None)
    parent = config.pop("parent", None)
    if not with_os:
        config.pop("os", None)
    config["layer_id"] = chain_id
    if parent:
        config["parent"] = f"sha256:{parent}"
    body = "{" + ",".join(f"{_go_json(key)}:{_go_json(config[key])}" for key in sorted(config)) + "}"
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _go_json(value: Any) -> str:
    """Serialize like Go's encoding/json: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for character, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                               ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(character, escaped)
    return text


class LayerFilter:
    """Drops the `layer.tar` members of a `docker save` stream whose layers the target has.

    `chains` are the chain IDs of the image's layers, bottom first; `present` is the set of
    chain IDs the target has. The counters tell what was sent and what was left out.
    """

    def __init__(self, chains: Sequence[str], present: set[str]) -> None:
        self.chains = list(chains)
        self.skippable = {chain for chain in self.chains if chain in present}
        self.sent_bytes = 0
        self.skipped_bytes = 0
        self.skipped_layers: list[str] = []
        self._buffer = bytearray()  # start of the next member header, or of metadata content
        self._pending = bytearray()  # extended headers that belong to the next member
        self._pending_name: str | None = None
        self._forward = 0  # bytes of the current member still to send
        self._discard = 0  # bytes of the current member still to leave out
        self._layer_json: dict[str, bytes] = {}

    def filter(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the stream without the skipped members."""
        for chunk in chunks:
            output = self.feed(chunk)
            if output:
                yield output
        tail = bytes(self._pending + self._buffer)
        self._pending.clear()
        self._buffer.clear()
        if tail:
            self.sent_bytes += len(tail)
            yield tail

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk of the stream; return the bytes to send now."""
        output = bytearray()
        view = memoryview(chunk)
        while view:
            if self._discard:
                step = min(self._discard, len(view))
                self._discard -= step
                self.skipped_bytes += step
                view = view[step:]
            elif self._forward:
                step = min(self._forward, len(view))
                self._forward -= step
                output += view[:step]
                view = view[step:]
            else:
                self._buffer += view
                view = view[len(view):]
                output += self._drain()
        self.sent_bytes += len(output)
        return bytes(output)

    def _drain(self) -> bytes:
        """Consume the members that start in the buffer; return the bytes to send.

        A member whose data runs past the buffer leaves the rest to `_forward` or
        `_discard`, and the buffer is then empty.
        """
        output = bytearray()
        while len(self._buffer) >= BLOCK:
            header = bytes(self._buffer[:BLOCK])
            if header == bytes(BLOCK):
                output += self._pending + header
                self._pending.clear()
                del self._buffer[:BLOCK]
                continue

            size = _member_size(header)
            padded = -(-size // BLOCK) * BLOCK
            typeflag = header[156:157]
            name = self._pending_name or _member_name(header)
            needs_content = typeflag in EXTENDED_TYPES or _is_layer_json(name, size)
            if needs_content and len(self._buffer) < BLOCK + padded:
                break  # wait for the rest of the member's content

            content = bytes(self._buffer[BLOCK:BLOCK + size]) if needs_content else b""
            if typeflag in EXTENDED_TYPES:
                self._hold_extended(header + bytes(self._buffer[BLOCK:BLOCK + padded]), typeflag,
                                    content)
                del self._buffer[:BLOCK + padded]
                continue

            self._pending_name = None
            available = min(len(self._buffer) - BLOCK, padded)
            if self._should_skip(name, content):
                self.skipped_bytes += len(self._pending) + BLOCK + available
                self._discard = padded - available
            else:
                output += self._pending + self._buffer[:BLOCK + available]
                self._forward = padded - available
            self._pending.clear()
            del self._buffer[:BLOCK + available]
        return bytes(output)

    def _hold_extended(self, member: bytes, typeflag: bytes, content: bytes) -> None:
        if len(self._pending) + len(member) > MAX_METADATA_BYTES:
            raise TransferFailed("the image archive has extended tar headers of more than "
                                 f"{MAX_METADATA_BYTES} bytes",
                                 hint="check the image on the source engine")
        self._pending += member
        if typeflag == b"L":
            self._pending_name = content.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif typeflag == b"x":
            path = _pax_path(content)
            if path is not None:
                self._pending_name = path

    def _should_skip(self, name: str, content: bytes) -> bool:
        match = LAYER_DIRECTORY.match(name)
        if match is None:
            return False
        directory, member = match.groups()
        if member == "json":
            if content:
                self._layer_json[directory] = content
            return False

        layer_json = self._layer_json.get(directory)
        if layer_json is None or not self.skippable:
            return False
        chain = self._chain_of(directory, layer_json)
        if chain is None or chain not in self.skippable:
            return False
        self.skipped_layers.append(chain)
        logger.info("leaving out layer %s: the target has it", chain[:19])
        return True

    def _chain_of(self, directory: str, layer_json: bytes) -> str | None:
        for chain in self.chains:
            for with_os in (True, False):
                if v1_id(layer_json, chain, with_os=with_os) == directory:
                    return chain
        return None


def _is_layer_json(name: str, size: int) -> bool:
    match = LAYER_DIRECTORY.match(name)
    return bool(match and match.group(2) == "json" and size <= MAX_METADATA_BYTES)


def _member_size(header: bytes) -> int:
    field = header[124:136]
    if field[0] & 0x80:  # base-256, for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _member_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _pax_path(records: bytes) -> str | None:
    """Return the path record of a PAX extended header, if any."""
    for line in records.split(b"\n"):
        _, _, record = line.partition(b" ")
        key, separator, value = record.partition(b"=")
        if separator and key == b"path":
            return value.decode("utf-8", "replace")
    return None
