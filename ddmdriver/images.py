"""Images on an engine: inspect, tag, remove, and relay an image from one engine to another.

An image moves as the tar stream of GET /images/get (the `docker save` format), relayed by
this process into POST /images/load (`docker load`) on the target, chunk by chunk. No registry
is ever contacted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ddm.errors import MigrationFailed, TransferFailed
from ddmdriver.engine import TRANSPORT_ERRORS, Engine, _NotFound, _raise_for_stream_error

logger = logging.getLogger(__name__)

IMAGE_CHUNK_SIZE = 1024 * 1024


def image_inspect(engine: Engine, reference: str) -> dict[str, Any] | None:
    """Return GET /images/{reference}/json, or None when the engine has no such image."""
    try:
        with engine._errors(f"inspecting image {reference}"):
            return engine.api.inspect_image(reference)
    except _NotFound:
        return None


def image_tag(engine: Engine, image_id: str, reference: str) -> None:
    """Tag an image as `reference` (repository[:tag])."""
    repository, tag = split_reference(reference)
    with engine._errors(f"tagging image {image_id[:19]} as {reference}"):
        engine.api.tag(image_id, repository, tag)
    logger.info("tagged image %s as %s on %s", image_id[:19], reference, engine.host.name)


def image_remove(engine: Engine, reference: str) -> None:
    """Remove a tag, or an untagged image by ID; a missing image is not an error."""
    try:
        with engine._errors(f"removing image {reference}"):
            engine.api.remove_image(reference, force=False, noprune=False)
    except _NotFound:
        return
    logger.info("removed image %s on %s", reference, engine.host.name)


def split_reference(reference: str) -> tuple[str, str]:
    """Split "registry:5000/app:1.2" into ("registry:5000/app", "1.2"); the tag defaults to latest."""
    name, _, digest = reference.partition("@")
    if digest:
        return name, ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "latest"


def relay_image(
    source: Engine,
    target: Engine,
    names: Sequence[str],
    *,
    on_chunk: Callable[[int], None] | None = None,
    transform: Callable[[Iterator[bytes]], Iterator[bytes]] | None = None,
) -> int:
    """Stream `docker save NAMES` on the source into `docker load` on the target.

    `names` are tags (restored on the target with the image) or one image ID. `transform`,
    when given, rewrites the stream on its way (see ddmdriver.imagelayers). Return the bytes
    read from the source; on_chunk is called with each chunk's size as it is read.
    """
    description = f"image {', '.join(names)} from {source.host.name}"
    url = source.api._url("/images/get")
    with source._errors(f"saving {description}"):
        response = source.api._get(url, params={"names": list(names)}, stream=True)
        source.api._raise_for_status(response)

    counter = [0]

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                chunk = response.raw.read(IMAGE_CHUNK_SIZE, decode_content=True)
                if not chunk:
                    return
                counter[0] += len(chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
                yield chunk
        except TRANSPORT_ERRORS as error:
            raise TransferFailed(f"reading {description} failed after {counter[0]} bytes: "
                                 f"{error}") from None

    try:
        with target._errors(f"loading {description} on {target.host.name}"):
            data = transform(chunks()) if transform is not None else chunks()
            output = target.api._post(target.api._url("/images/load"), data=data,
                                      params={"quiet": "1"},
                                      headers={"Content-Type": "application/x-tar"})
            target.api._raise_for_status(output)
        _raise_for_stream_error(output.text, f"loading {description} on {target.host.name}")
    finally:
        response.close()

    if counter[0] == 0:
        raise MigrationFailed(f"saving {description} returned no data")
    logger.info("relayed %s to %s: %d bytes", description, target.host.name, counter[0])
    return counter[0]
