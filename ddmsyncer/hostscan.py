"""Host-side helper of incremental migration; runs on a Docker host with `python3`.

DDM sends this file's source to the host with the command (see ddmsyncer.incremental), so it
uses only the standard library and Python 3.7 features. It works on a volume's mountpoint:

    scan ROOT HASH      one JSON line per entry below ROOT; HASH is "all", "none", "list"
                        (hash the NUL-separated paths read from stdin), "cached" (see below)
                        or "newer:NS" (hash the files whose mtime is at least NS nanoseconds).
                        "cached" reads the known keys from stdin, one "PATH DEV INODE SIZE
                        MTIME_NS CTIME_NS DIGEST" line each (PATH in base64, DIGEST optional),
                        and hashes the files whose key is not listed. A file whose key equals
                        its listed key gets the listed DIGEST and a 16th field, true. The last
                        line also has "cache_hits", the count of those files, and "gone", the
                        base64 paths listed on stdin that no longer exist
    rescan ROOT HASH    like scan, but stdin lists the keys of entries that an earlier scan
                        reported, one "PATH DEV INODE SIZE MTIME_NS CTIME_NS" line each (PATH in
                        base64); a later line for a path replaces an earlier one, and a line
                        with the PATH alone removes it from the listing. An entry whose lstat
                        key equals its listed key is not reported.
                        HASH is "all" (hash every reported file) or "none". The last line also
                        has "unchanged", the count of entries not reported, and "gone", the
                        base64 paths listed on stdin that no longer exist. stdin must end with
                        the line "end"; without it (a command started early and closed
                        unused) nothing is scanned
    stat ROOT           lstat only, for seeding the hash cache from a full copy: first the
                        line {"started_ns": NS} (the host's clock before the first lstat,
                        written at once), then [path, dev, inode, size, mtime_ns, ctime_ns]
                        for each regular file, path in base64
    rehash ROOT NOT_BEFORE_NS MAX_WAIT_NS
                        for the hash cache seed: wait until the host's clock passes
                        NOT_BEFORE_NS (at most MAX_WAIT_NS), then for each NUL-separated
                        path read from stdin that is a regular file write [path, dev,
                        inode, size, mtime_ns, ctime_ns, sha256, checked_ns], checked_ns
                        being the host's clock just before the file's lstat
    delete ROOT         remove the NUL-separated relative paths read from stdin
    apply ROOT          read an 8-byte big-endian length and that many bytes of NUL-separated
                        relative paths from stdin, remove them, then unpack the rest of stdin
                        with `tar -x` into ROOT
    stash ROOT DEST     before an update: move the entries it replaces or deletes into DEST and
                        record the directories it changes; stdin is {"send": [...], "delete":
                        [...], "reset_xattrs": [...]} with base64 paths; the directories of
                        "reset_xattrs" lose their extended attributes once recorded. Exits
                        with status 3 (SEPARATE_MOUNT_STATUS), changing nothing, when ROOT,
                        the directory of an entry to move or a directory to move is on
                        another mount than DEST's parent
    unstash ROOT DEST   undo an update prepared by `stash`, also after a partial stash
    backup ROOT DEST    hard-link copy of ROOT at DEST (`cp -al`); backups of earlier versions
    restore ROOT DEST   replace ROOT by DEST, undoing every change made since `backup`
    discard DEST        remove DEST
    discard-later DEST  remove DEST once stdin is "discard"; any other stdin, such as the
                        empty stdin of a command started early and closed unused, keeps DEST

Each scan line is [path, type, mode, uid, gid, size, mtime_ns, link, rdev, inode, nlink, hash,
dev, ctime_ns, xattrs] with path and link in base64 of the raw bytes, "." for ROOT itself, the
SHA-256 hex digest of a regular file's content (the pieced digest of ddm/piecehash.py for a
file of at least MIN_PIECES pieces of PIECE_BYTES) or null, and the SHA-256 hex digest of the
entry's extended attributes (names and values, sorted; POSIX ACLs are the system.posix_acl_*
attributes) or null when it has none. The last line is a JSON object with
the counts "hashed_files" and "hashed_bytes" and "started_ns", the host's clock when the scan
started.

`stash` moves entries instead of hard-linking the whole tree, because a hard link changes the
ctime of the linked inode. The controller's hash cache keys on ctime, so after a `cp -al`
backup every unchanged file would look changed on the next run.
"""

import base64
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

BLOCK = 1024 * 1024
# Pieced digests: these equal the constants of ddm/piecehash.py.
PIECE_BYTES = 16 * 1024 * 1024
MIN_PIECES = 4
PIECES_HEADER = b"ddm sha256 pieces\n"
PIECES_PREFIX = "sha256-pieces-"
# hashlib and os.preadv release the GIL, so the threads hash on separate cores where the
# host has them.
MAX_HASH_THREADS = 4
# The exit status of `stash` when rename(2) cannot move entries into DEST (EXDEV).
SEPARATE_MOUNT_STATUS = 3
# A name longer than NAME_MAX (255 bytes), so no entry has it and a rename of it moves nothing.
PROBE_NAME = b"d" * 256
TYPES = (
    (stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISSOCK, "socket"),
)


def entry_type(mode):
    for test, name in TYPES:
        if test(mode):
            return name
    return "other"


def file_digest(path, size):
    """Return the SHA-256 hex digest of a file, or its pieced digest for a large `size`."""
    if size >= MIN_PIECES * PIECE_BYTES:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            return pieced_sha256(descriptor, size, PIECE_BYTES)
        finally:
            os.close(descriptor)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK)
            if not block:
                return digest.hexdigest()
            digest.update(block)


# NOTE: hash_piece to the pieced digest repeat hostmanifest.py line for line, because each
# host script runs alone on its host. tests/unit/test_piecehash.py checks that they agree.
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


def pieced_sha256(descriptor, size, piece_bytes, known=()):
    """Return the pieced digest of an open file of `size` bytes (lstat), hashed by threads.

    Threads hash every piece but the last by its offset. This thread hashes the last piece,
    and whatever the file grew by since lstat, to EOF, so the digest covers what a sequential
    read would. A piece that ends early (the file shrank) ends the content there. `known`
    contains the digests of the first whole pieces when they were hashed before (see
    PieceFollower in hostmanifest.py), so only the pieces after them are read.
    """
    threaded_pieces = (size - 1) // piece_bytes
    known_pieces = min(len(known), threaded_pieces)
    digests = list(known[:known_pieces]) + [None] * (threaded_pieces - known_pieces)
    lengths = [piece_bytes] * known_pieces + [0] * (threaded_pieces - known_pieces)
    errors = []
    thread_count = min(MAX_HASH_THREADS, os.cpu_count() or 1, threaded_pieces - known_pieces)

    def hash_pieces(first):
        view = memoryview(bytearray(BLOCK))
        try:
            for index in range(known_pieces + first, threaded_pieces, thread_count):
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
    view = memoryview(bytearray(BLOCK))
    while True:
        digest, count = hash_piece(descriptor, offset + length, piece_bytes, view)
        if not count:
            return digests, length
        digests.append(digest)
        length += count
        if count < piece_bytes:
            return digests, length


def xattrs_digest(path):
    """Return the SHA-256 of the entry's extended attributes, or None when it has none."""
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return None  # a file system without xattrs, or an entry that vanished
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        encoded = name.encode("utf-8", "surrogateescape")
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
        digest.update(len(value).to_bytes(4, "big") + value)
    return digest.hexdigest()


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


def parse_known_keys(data):
    """Return {path: key} of a rescan listing; a line with a path alone drops that path's key."""
    known = {}
    for line in data.splitlines():
        fields = line.split()
        if len(fields) == 6:
            known[base64.b64decode(fields[0])] = tuple(int(value) for value in fields[1:])
        elif len(fields) == 1 and fields[0] != b"end":
            known.pop(base64.b64decode(fields[0]), None)
    return known


def parse_known_digests(data):
    """Return {path: ((dev, inode, size, mtime_ns, ctime_ns), digest or None)} of `scan cached`."""
    known = {}
    for line in data.splitlines():
        fields = line.split()
        if len(fields) in (6, 7):
            key = tuple(int(value) for value in fields[1:6])
            digest = fields[6].decode("ascii") if len(fields) == 7 else None
            known[base64.b64decode(fields[0])] = (key, digest)
    return known


def file_key(info):
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def entry_key(info):
    """Return file_key with the size as scan reports it: 0 for all but regular files."""
    size = info.st_size if stat.S_ISREG(info.st_mode) else 0
    return (info.st_dev, info.st_ino, size, info.st_mtime_ns, info.st_ctime_ns)


def hash_test(hash_mode):
    """Return a function (relative path, lstat result) -> whether to hash the file.

    scan() handles "cached" itself, because that mode also reports known digests.
    """
    if hash_mode == b"all":
        return lambda relative, info: True
    if hash_mode == b"list":
        wanted = set(read_paths())
        return lambda relative, info: relative in wanted
    sys.stdin.buffer.read()  # a command started early waits here until the caller is ready
    if hash_mode.startswith(b"newer:"):
        newer_than_ns = int(hash_mode[len(b"newer:"):])
        return lambda relative, info: info.st_mtime_ns >= newer_than_ns
    return lambda relative, info: False


def entry_record(relative, path, info, digest):
    """Return the scan line fields of one entry (see the module docstring)."""
    kind = entry_type(info.st_mode)
    link = encode(os.readlink(path)) if kind == "symlink" else None
    return [encode(relative), kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
            info.st_size if kind == "file" else 0, info.st_mtime_ns, link,
            info.st_rdev if kind in ("char", "block") else 0, info.st_ino, info.st_nlink, digest,
            info.st_dev, info.st_ctime_ns, xattrs_digest(path)]


def scan(root, hash_mode):
    known = None
    if hash_mode == b"cached":
        known = parse_known_digests(sys.stdin.buffer.read())
    else:
        should_hash = hash_test(hash_mode)
    started_ns = time.time_ns()
    hashed_files = hashed_bytes = cache_hits = 0
    out = sys.stdout
    for relative, path in walk(root):
        info = os.lstat(path)
        digest = None
        cached = False
        listed_key, listed_digest = None, None
        if known is not None:
            listed_key, listed_digest = known.pop(relative, (None, None))
        if stat.S_ISREG(info.st_mode):
            if known is None:
                hash_file = should_hash(relative, info)
            else:
                hash_file = listed_key != file_key(info)
                cached = not hash_file and listed_digest is not None
            if hash_file:
                digest = file_digest(path, info.st_size)
                hashed_files += 1
                hashed_bytes += info.st_size
            elif cached:
                digest = listed_digest
                cache_hits += 1
        record = entry_record(relative, path, info, digest)
        if cached:
            record.append(True)
        out.write(json.dumps(record) + "\n")
    summary = {"hashed_files": hashed_files, "hashed_bytes": hashed_bytes, "started_ns": started_ns}
    if known is not None:
        summary.update(cache_hits=cache_hits, gone=[encode(path) for path in sorted(known)])
    out.write(json.dumps(summary) + "\n")


def rescan(root, hash_mode):
    """Report only the entries whose lstat key differs from the one listed on stdin.

    A change of content, mode, owner, extended attributes or link target sets the entry's
    ctime, and adding or removing a name sets its directory's mtime, so an entry with an
    unchanged key needs no new record. The caller lists only keys it may trust (see
    ddmsyncer.incremental.rescan_volume for the racy-ctime rule).
    """
    data = sys.stdin.buffer.read()
    if not data.endswith(b"\nend") and data != b"end":
        return  # started early and closed unused
    known = parse_known_keys(data)
    hash_files = hash_mode == b"all"
    started_ns = time.time_ns()
    hashed_files = hashed_bytes = unchanged = 0
    out = sys.stdout
    for relative, path in walk(root):
        info = os.lstat(path)
        if known.pop(relative, None) == entry_key(info):
            unchanged += 1
            continue
        digest = None
        if hash_files and stat.S_ISREG(info.st_mode):
            digest = file_digest(path, info.st_size)
            hashed_files += 1
            hashed_bytes += info.st_size
        out.write(json.dumps(entry_record(relative, path, info, digest)) + "\n")
    out.write(json.dumps({"hashed_files": hashed_files, "hashed_bytes": hashed_bytes,
                          "started_ns": started_ns, "unchanged": unchanged,
                          "gone": [encode(path) for path in sorted(known)]}) + "\n")


def stat_files(root):
    out = sys.stdout
    out.write(json.dumps({"started_ns": time.time_ns()}) + "\n")
    out.flush()  # the controller starts the copy only after this line
    for relative, path in walk(root):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue  # removed since the walk listed it
        if stat.S_ISREG(info.st_mode):
            out.write(json.dumps([encode(relative), info.st_dev, info.st_ino, info.st_size,
                                  info.st_mtime_ns, info.st_ctime_ns]) + "\n")


def rehash(root, not_before_ns, max_wait_ns):
    paths = read_paths()
    wait_ns = min(int(not_before_ns) - time.time_ns(), int(max_wait_ns))
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9)
    out = sys.stdout
    for relative in paths:
        path = os.path.join(root, relative)
        checked_ns = time.time_ns()
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            digest = file_digest(path, info.st_size)
        except OSError:
            continue  # removed or replaced since the scan, so it is not seeded
        out.write(json.dumps([encode(relative), info.st_dev, info.st_ino, info.st_size,
                              info.st_mtime_ns, info.st_ctime_ns, digest, checked_ns]) + "\n")


def parents_first(paths):
    """Sort relative paths so that parents come before their children."""
    return sorted(paths, key=lambda path: path.split(b"/"))


def remove_entry(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def read_all_xattrs(path):
    """Return {name: value} of an entry's extended attributes, ACLs included."""
    values = {}
    for name in os.listxattr(path, follow_symlinks=False):
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
    return values


def on_one_mount(directory, other):
    """Return whether rename(2) can move entries of `directory` into `other`.

    Linux (do_renameat2 in fs/namei.c) compares the mounts of both parent directories before
    it looks up the names. So renaming a name that cannot exist fails with EXDEV across mounts,
    also between two bind mounts of one file system, which share st_dev. Within one mount it
    fails with another error, such as ENAMETOOLONG or EROFS.
    """
    try:
        os.rename(os.path.join(directory, PROBE_NAME), os.path.join(other, PROBE_NAME))
    except OSError as error:
        return error.errno != errno.EXDEV
    return True


def reject_separate_mounts(root, moved, dest):
    """Exit with SEPARATE_MOUNT_STATUS when ROOT, a moved entry's parent or a moved directory
    is on another mount than DEST's parent, such as a disk mounted onto the volume's _data.

    A moved directory that is a mount point would fail with EBUSY, so it is checked too.
    NOTE: a single file bind-mounted onto a moved file is not detected. Its rename fails with
    EBUSY, and unstash then moves back the entries moved before it.
    """
    backup_parent = os.path.dirname(dest)
    directories = {root}
    for relative in moved:
        path = os.path.join(root, relative)
        directories.add(os.path.dirname(path))
        if os.path.isdir(path) and not os.path.islink(path):
            directories.add(path)
    for directory in sorted(directories):
        if not on_one_mount(directory, backup_parent):
            sys.stderr.write("%s is on another mount than %s\n"
                             % (os.fsdecode(directory), os.fsdecode(backup_parent)))
            sys.exit(SEPARATE_MOUNT_STATUS)


def stash(root, dest):
    """Move what an update replaces or deletes out of ROOT into DEST, after writing a journal.

    The journal lists the moved entries, the sent paths that do not exist yet ("new") and the
    metadata and extended attributes of the existing directories that the update rewrites. It
    is written before the first move, so `unstash` can undo a stash that stopped part way.
    tar adds and changes a directory's extended attributes but never removes one, so the
    directories listed in "reset_xattrs" lose all of theirs after the journal is written,
    and tar then sets the source's.
    """
    data = sys.stdin.buffer.read()
    if not data:
        return  # started early and closed unused
    request = json.loads(data)
    send = [base64.b64decode(path) for path in request["send"]]
    delete = [base64.b64decode(path) for path in request["delete"]]
    reset_xattrs = {base64.b64decode(path) for path in request.get("reset_xattrs", ())}
    if os.path.lexists(dest):
        sys.exit("backup directory " + os.fsdecode(dest) + " exists already")

    moved, new, directories = [], [], []
    for relative in parents_first(delete):
        if os.path.lexists(os.path.join(root, relative)):
            moved.append(relative)
    moved_set = set(moved)
    for relative in parents_first(send):
        if relative in moved_set or any(relative.startswith(done + b"/") for done in moved_set):
            continue  # restored with the moved entry
        path = os.path.join(root, relative) if relative != b"." else root
        if not os.path.lexists(path):
            new.append(relative)
        elif os.path.isdir(path) and not os.path.islink(path):
            info = os.lstat(path)
            xattrs = {name: encode(value) for name, value in read_all_xattrs(path).items()}
            directories.append([encode(relative), stat.S_IMODE(info.st_mode), info.st_uid,
                                info.st_gid, info.st_atime_ns, info.st_mtime_ns, xattrs])
        else:
            moved.append(relative)
            moved_set.add(relative)

    reject_separate_mounts(root, moved, dest)
    os.mkdir(dest, 0o700)
    os.mkdir(os.path.join(dest, b"data"), 0o700)
    journal = {"moved": [encode(path) for path in moved], "new": [encode(path) for path in new],
               "directories": directories}
    with open(os.path.join(dest, b"journal.json"), "w") as handle:
        json.dump(journal, handle)
        handle.flush()
        os.fsync(handle.fileno())
    for relative in moved:
        stashed = os.path.join(dest, b"data", relative)
        os.makedirs(os.path.dirname(stashed), exist_ok=True)
        os.rename(os.path.join(root, relative), stashed)
    for values in directories:
        relative = base64.b64decode(values[0])
        if relative in reset_xattrs:
            path = os.path.join(root, relative) if relative != b"." else root
            for name in values[6]:
                os.removexattr(path, name, follow_symlinks=False)


def unstash(root, dest):
    """Undo an update: remove new entries, move stashed ones back, reset directory metadata."""
    journal_path = os.path.join(dest, b"journal.json")
    if not os.path.exists(journal_path):
        if os.path.lexists(dest):
            shutil.rmtree(dest)  # stopped before the journal, so nothing was moved
        return
    with open(journal_path) as handle:
        journal = json.load(handle)

    for relative in reversed(parents_first(base64.b64decode(path) for path in journal["new"])):
        remove_entry(os.path.join(root, relative))
    for relative in parents_first(base64.b64decode(path) for path in journal["moved"]):
        stashed = os.path.join(dest, b"data", relative)
        if os.path.lexists(stashed):  # otherwise it was never moved, or is back already
            remove_entry(os.path.join(root, relative))
            os.rename(stashed, os.path.join(root, relative))
    directories = [[base64.b64decode(values[0])] + values[1:] for values in journal["directories"]]
    # Only adding or removing names changes a directory's mtime, so the order does not matter
    # here. Journals of older versions have no extended attributes.
    for relative, mode, uid, gid, atime_ns, mtime_ns, *xattrs in directories:
        path = os.path.join(root, relative) if relative != b"." else root
        if xattrs:
            restore_xattrs(path, {name: base64.b64decode(value)
                                  for name, value in xattrs[0].items()})
        os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, mode)
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    shutil.rmtree(dest)


def restore_xattrs(path, recorded):
    """Give an entry exactly the recorded extended attributes, changing only those that differ."""
    current = read_all_xattrs(path)
    for name in current:
        if name not in recorded:
            os.removexattr(path, name, follow_symlinks=False)
    for name, value in recorded.items():
        if current.get(name) != value:
            os.setxattr(path, name, value, follow_symlinks=False)


def delete(root, paths=None):
    for relative in read_paths() if paths is None else paths:
        path = os.path.join(root, relative)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)


def read_exactly(count):
    """Read `count` bytes from fd 0 without buffering, so that tar gets the rest of stdin."""
    parts = []
    while count:
        part = os.read(0, count)
        if not part:
            sys.exit("stdin ended before the listing of paths to delete")
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


def apply(root):
    length = int.from_bytes(read_exactly(8), "big")
    delete(root, [path for path in read_exactly(length).split(b"\0") if path])
    sys.stdout.flush()
    os.execvp("tar", ["tar", "-C", root, "--numeric-owner", "--same-owner", "-p", "--xattrs",
                      "--xattrs-include=*", "--acls", "-xf", "-"])


def main():
    command = sys.argv[1]
    arguments = [os.fsencode(argument) for argument in sys.argv[2:]]
    if command == "scan":
        scan(arguments[0], arguments[1])
    elif command == "rescan":
        rescan(arguments[0], arguments[1])
    elif command == "stat":
        stat_files(arguments[0])
    elif command == "rehash":
        rehash(arguments[0], arguments[1], arguments[2])
    elif command == "delete":
        delete(arguments[0])
    elif command == "apply":
        apply(arguments[0])
    elif command == "stash":
        stash(arguments[0], arguments[1])
    elif command == "unstash":
        unstash(arguments[0], arguments[1])
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
    elif command == "discard-later":
        if sys.stdin.buffer.read() == b"discard" and os.path.lexists(arguments[0]):
            shutil.rmtree(arguments[0])
    else:
        sys.exit("unknown command " + command)


main()
