"""Host-side helper of the verify phase; runs on a Docker host with `python3`.

DDM sends this file's source to the target host with the command (see ddmsyncer.hostverify),
so it uses only the standard library and Python 3.7 features. It describes every entry of a
volume's mountpoint the way GNU tar 1.34 (`--xattrs --xattrs-include=* --acls --sparse`) would
archive it, so that the result compares with a manifest built from such an archive:

    hostmanifest ROOT HASH [keys] [session]
                                     one JSON line per entry below ROOT; HASH is "sha256",
                                     "pieces:N" or "none"

Each line is [path, type, mode, uid, gid, size, mtime_ns, link, devmajor, devminor, inode,
nlink, xattrs, acl_access, acl_default, sparse, sha256]. path and link are base64 of the raw
bytes ("." is ROOT itself), xattrs is a list of [name, value] pairs in base64, and sha256 is
the digest of a regular file's content or null. With "sha256" it is the SHA-256 hex digest of
every file. With "pieces:N" a file of at least MIN_PIECES pieces of N bytes gets the pieced
digest "sha256-pieces-N:HEX" of ddm/piecehash.py instead, whose pieces are hashed in
parallel threads. Sockets are left out, because tar skips them. Hard links are listed as
files with their inode and link count; the controller groups them.

With "keys", each line has three more fields for the controller's hash cache
(ddmsyncer/hashcache.py): dev, ctime_ns, and checked_ns, the host's clock just before the
entry's lstat.

With "session" the script is started before the verify needs it, so that the login shell and
python3's start do not delay the verify. It waits for the line "scan" on stdin (and exits
at the end of stdin without it), writes the listing and then the line {"end": true}. Then it
waits again: the line {"move_to": DIR} moves ROOT onto the empty directory DIR as MOVE_SCRIPT
in ddmdriver/hostpath.py does, with the same exit statuses, and the end of stdin exits.
"""

import base64
import grp
import hashlib
import json
import os
import pwd
import stat
import struct
import sys
import threading
import time

BLOCK = 1024 * 1024
# One read buffer for every file: allocating 1 MiB per file cost more than hashing a 4 KiB file.
BUFFER = bytearray(BLOCK)
BUFFERS = [BUFFER]
VIEW = memoryview(BUFFER)
# Pieced digests: MIN_PIECES, the header and the prefix equal those of ddm/piecehash.py.
MIN_PIECES = 4
PIECES_HEADER = b"ddm sha256 pieces\n"
PIECES_PREFIX = "sha256-pieces-"
# hashlib and os.preadv release the GIL, so the threads hash on separate cores where the
# host has them.
MAX_HASH_THREADS = 4
TYPES = (
    (stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"),
)
ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
# Tags of the Linux POSIX ACL xattr format (version 2): user_obj, user, group_obj, group,
# mask, other.
ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}


def entry_type(mode):
    for test, name in TYPES:
        if test(mode):
            return name
    return None


def file_sha256(path, size, piece_bytes=None):
    """Return the digest of a file's content: pieced when piece_bytes is set and size is large."""
    # NOTE: the holes of a sparse file are read and hashed as zeros, as the controller hashes
    # the expanded stream, so an 8 GiB file with two data blocks costs 8 GiB of SHA-256.
    # O_NOFOLLOW: a name that became a symlink since lstat() is not followed out of the volume.
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if piece_bytes and size >= MIN_PIECES * piece_bytes:
            return pieced_sha256(descriptor, size, piece_bytes)
        digest = hashlib.sha256()
        while True:
            count = os.readv(descriptor, BUFFERS)
            if not count:
                return digest.hexdigest()
            digest.update(VIEW[:count])
    finally:
        os.close(descriptor)


def hash_piece(descriptor, offset, length, view):
    """Return (SHA-256 digest, bytes read) of `length` bytes at `offset`; fewer at EOF."""
    digest = hashlib.sha256()
    done = 0
    while done < length:
        count = os.preadv(descriptor, [view[:min(len(view), length - done)]], offset + done)
        if not count:
            break
        digest.update(view[:count])
        done += count
    return digest.digest(), done


def pieced_sha256(descriptor, size, piece_bytes):
    """Return the pieced digest of an open file of `size` bytes (lstat), hashed by threads.

    Threads hash every piece but the last by its offset. This thread hashes the last piece,
    and whatever the file grew by since lstat, to EOF, so the digest covers what a sequential
    read would. A piece that ends early (the file shrank) ends the content there.
    """
    threaded_pieces = (size - 1) // piece_bytes
    digests = [None] * threaded_pieces
    lengths = [0] * threaded_pieces
    errors = []
    thread_count = min(MAX_HASH_THREADS, os.cpu_count() or 1, threaded_pieces)

    def hash_pieces(first):
        view = memoryview(bytearray(BLOCK))
        try:
            for index in range(first, threaded_pieces, thread_count):
                digests[index], lengths[index] = hash_piece(descriptor, index * piece_bytes,
                                                            piece_bytes, view)
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=hash_pieces, args=(first,)) for first in range(thread_count)]
    for thread in threads:
        thread.start()
    tail_digests, tail_length = hash_tail(descriptor, threaded_pieces * piece_bytes, piece_bytes)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]

    outer = hashlib.sha256(PIECES_HEADER + piece_bytes.to_bytes(8, "big"))
    length = 0
    for digest, piece_length in zip(digests, lengths):
        outer.update(digest)
        length += piece_length
        if piece_length < piece_bytes:
            break
    else:
        for digest in tail_digests:
            outer.update(digest)
        length += tail_length
    outer.update(length.to_bytes(8, "big"))
    return "%s%d:%s" % (PIECES_PREFIX, piece_bytes, outer.hexdigest())


def hash_tail(descriptor, offset, piece_bytes):
    """Return the piece digests and the length of the content from `offset` to EOF."""
    digests = []
    length = 0
    while True:
        digest, count = hash_piece(descriptor, offset + length, piece_bytes, VIEW)
        if not count:
            return digests, length
        digests.append(digest)
        length += count
        if count < piece_bytes:
            return digests, length


def encode(raw):
    return base64.b64encode(raw).decode("ascii")


def read_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values = {}
    for name in names:
        raw = os.fsencode(name)
        try:
            values[raw] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return values


def qualifier(tag, ident):
    """Return the user or group name of an ACL entry, as libacl's acl_to_text writes it."""
    try:
        if tag == 0x02:
            return pwd.getpwuid(ident).pw_name
        return grp.getgrgid(ident).gr_name
    except (KeyError, OverflowError):
        return str(ident)


def acl_text(value):
    """Convert a POSIX ACL xattr value to GNU tar's text form: one "tag:qualifier:rwx" per line."""
    lines = []
    for offset in range(4, len(value) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, offset)
        name = qualifier(tag, ident) if tag in (0x02, 0x08) else ""
        bits = "".join(letter if perm & bit else "-" for letter, bit in (("r", 4), ("w", 2), ("x", 1)))
        lines.append("%s:%s:%s\n" % (ACL_TAGS.get(tag, "?"), name, bits))
    return "".join(lines)


def mode_acl_text(mode):
    """Return the minimal access ACL that tar writes from the permission bits alone."""
    parts = []
    for tag, shift in (("user", 6), ("group", 3), ("other", 0)):
        bits = (mode >> shift) & 7
        parts.append("%s::%s%s%s\n" % (tag, "r" if bits & 4 else "-", "w" if bits & 2 else "-",
                                       "x" if bits & 1 else "-"))
    return "".join(parts)


def acls(kind, mode, xattrs):
    """Return (access, default) ACL texts; tar writes them only for a file with an ACL xattr."""
    has_default = kind == "dir" and ACL_DEFAULT in xattrs
    if kind == "symlink" or not (ACL_ACCESS in xattrs or has_default):
        return None, None
    access = acl_text(xattrs[ACL_ACCESS]) if ACL_ACCESS in xattrs else mode_acl_text(mode)
    default = acl_text(xattrs[ACL_DEFAULT]) if has_default else None
    return access, default


def walk(root):
    """Yield (relative path, absolute path) of ROOT and everything below it.

    A directory that cannot be listed raises OSError, so the scan fails instead of leaving
    out that directory's entries.
    """
    yield b".", root
    pending = [(b"", root)]
    while pending:
        relative_directory, directory = pending.pop()
        with os.scandir(directory) as listing:
            children = sorted((entry.name, entry.path, entry.is_dir(follow_symlinks=False))
                              for entry in listing)
        subdirectories = []
        for name, path, is_directory in children:
            relative = relative_directory + name
            yield relative, path
            if is_directory:
                subdirectories.append((relative + b"/", path))
        pending.extend(reversed(subdirectories))


def describe(relative, path, hash_content, with_keys=False, piece_bytes=None):
    checked_ns = time.time_ns() if with_keys else None
    info = os.lstat(path)
    kind = entry_type(info.st_mode)
    if kind is None:
        return None
    xattrs = read_xattrs(path)
    access, default = acls(kind, info.st_mode, xattrs)
    is_file = kind == "file"
    is_device = kind in ("char", "block")
    # GNU tar's test for a sparse member: fewer 512-byte blocks allocated than the size needs.
    sparse = is_file and info.st_blocks < (info.st_size + 511) // 512
    record = [
        encode(relative), kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
        info.st_size if is_file else 0, info.st_mtime_ns,
        encode(os.readlink(path)) if kind == "symlink" else None,
        os.major(info.st_rdev) if is_device else 0, os.minor(info.st_rdev) if is_device else 0,
        info.st_ino, info.st_nlink,
        [[encode(name), encode(value)] for name, value in sorted(xattrs.items())],
        access, default, sparse,
        file_sha256(path, info.st_size, piece_bytes) if is_file and hash_content else None,
    ]
    if with_keys:
        record += [info.st_dev, info.st_ctime_ns, checked_ns]
    return record


def move_root(root, target):
    """Replace the empty directory `target` by ROOT with rename(2), then create ROOT again.

    Returns MOVE_SCRIPT's exit status: 0, 3 (not one file system, or lstat failed), 4 (the
    rename failed) or 5 (mkdir failed).
    """
    try:
        root_device = os.lstat(root).st_dev
        target_device = os.lstat(target).st_dev
    except OSError as error:
        sys.stderr.write("%s\n" % error)
        return 3
    if root_device != target_device:
        sys.stderr.write("%s is on device %d, %s on device %d\n"
                         % (os.fsdecode(root), root_device, os.fsdecode(target), target_device))
        return 3
    try:
        os.rename(root, target)
    except OSError as error:
        sys.stderr.write("%s\n" % error)
        return 4
    try:
        os.mkdir(root)
    except OSError as error:
        sys.stderr.write("%s\n" % error)
        return 5
    return 0


def main():
    root = os.fsencode(sys.argv[1])
    hash_mode = sys.argv[2]
    hash_content = hash_mode == "sha256" or hash_mode.startswith("pieces:")
    piece_bytes = int(hash_mode[len("pieces:"):]) if hash_mode.startswith("pieces:") else None
    with_keys = "keys" in sys.argv[3:]
    session = "session" in sys.argv[3:]
    if session and sys.stdin.readline() != "scan\n":
        return

    out = sys.stdout
    for relative, path in walk(root):
        record = describe(relative, path, hash_content, with_keys, piece_bytes)
        if record is not None:
            out.write(json.dumps(record) + "\n")
    if not session:
        return

    out.write(json.dumps({"end": True}) + "\n")
    out.flush()
    request = sys.stdin.readline()
    if request:
        sys.exit(move_root(root, os.fsencode(json.loads(request)["move_to"])))


main()
