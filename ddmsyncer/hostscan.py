"""Host-side helper of incremental migration; runs on a Docker host with `python3`.

DDM sends this file's source to the host with the command (see ddmsyncer.incremental), so it
uses only the standard library and Python 3.7 features. It works on a volume's mountpoint:

    scan ROOT HASH      one JSON line per entry below ROOT; HASH is "all", "none" or "list"
                        (hash the NUL-separated paths read from stdin)
    delete ROOT         remove the NUL-separated relative paths read from stdin
    backup ROOT DEST    hard-link copy of ROOT at DEST (`cp -al`, so it costs no data blocks)
    restore ROOT DEST   replace ROOT by DEST, undoing every change made since `backup`
    discard DEST        remove DEST

Each scan line is [path, type, mode, uid, gid, size, mtime_ns, link, rdev, inode, nlink, hash]
with path and link in base64 of the raw bytes, "." for ROOT itself, and the SHA-256 hex digest
of a regular file's content or null.
"""

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

BLOCK = 1024 * 1024
TYPES = (
    (stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISSOCK, "socket"),
)


def entry_type(mode):
    for test, name in TYPES:
        if test(mode):
            return name
    return "other"


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def encode(raw):
    return base64.b64encode(raw).decode("ascii")


def walk(root):
    """Yield (relative path, absolute path) of ROOT and everything below it, parents first."""
    yield b".", root
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative_directory = os.path.relpath(directory, root)
        for name in sorted(dirnames) + sorted(filenames):
            relative = name if relative_directory == b"." else os.path.join(relative_directory, name)
            yield relative, os.path.join(directory, name)


def read_paths():
    data = sys.stdin.buffer.read()
    return [path for path in data.split(b"\0") if path]


def scan(root, hash_mode):
    wanted = set(read_paths()) if hash_mode == b"list" else None
    out = sys.stdout
    for relative, path in walk(root):
        info = os.lstat(path)
        kind = entry_type(info.st_mode)
        link = encode(os.readlink(path)) if kind == "symlink" else None
        digest = None
        if kind == "file" and (hash_mode == b"all" or (wanted is not None and relative in wanted)):
            digest = file_digest(path)
        record = [encode(relative), kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                  info.st_size if kind == "file" else 0, info.st_mtime_ns, link,
                  info.st_rdev if kind in ("char", "block") else 0, info.st_ino, info.st_nlink, digest]
        out.write(json.dumps(record) + "\n")


def delete(root):
    for relative in read_paths():
        path = os.path.join(root, relative)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)


def main():
    command = sys.argv[1]
    arguments = [os.fsencode(argument) for argument in sys.argv[2:]]
    if command == "scan":
        scan(arguments[0], arguments[1])
    elif command == "delete":
        delete(arguments[0])
    elif command == "backup":
        if os.path.lexists(arguments[1]):
            shutil.rmtree(arguments[1])
        subprocess.run([b"cp", b"-a", b"-l", arguments[0], arguments[1]], check=True)
    elif command == "restore":
        if os.path.isdir(arguments[1]):
            shutil.rmtree(arguments[0])
            os.rename(arguments[1], arguments[0])
    elif command == "discard":
        if os.path.lexists(arguments[0]):
            shutil.rmtree(arguments[0])
    else:
        sys.exit("unknown command " + command)


main()
