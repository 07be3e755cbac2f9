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
python3's start do not delay the verify. ROOT "-" stands for the directory named by a first
line {"root": PATH} on stdin, so that the script can start before the directory exists. With
"pieces:N" it also hashes the pieces of large files while the copy writes them
(PieceFollower). Once its watches are in place it writes the line
{"ready": true, "following": BOOL}. It waits for the line "scan" on stdin: the end of stdin
before it exits with status 0, any other line with status 2. It writes the listing and then
the line {"end": true, "followed_bytes": B}, B being the content bytes that the scan took
from the follower instead of reading them. Then it waits again: the line {"move_to": DIR}
moves ROOT onto the empty directory DIR as MOVE_SCRIPT in ddmdriver/hostpath.py does, with
the same exit statuses, and the end of stdin exits.
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
# Bytes of content whose pieces the PieceFollower hashed before the scan, for the end line.
FOLLOWED_BYTES = [0]
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


def file_sha256(path, size, piece_bytes=None, followed=None):
    """Return the digest of a file's content: pieced when piece_bytes is set and size is large.

    `followed` is PieceFollower.piece_digests() of the file: the follower's descriptor of it
    and the digests of the pieces hashed while tar wrote them.
    """
    if followed is not None and piece_bytes and size >= MIN_PIECES * piece_bytes:
        descriptor, known = followed
        FOLLOWED_BYTES[0] += len(known) * piece_bytes
        return pieced_sha256(descriptor, size, piece_bytes, known)
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
    while True:
        digest, count = hash_piece(descriptor, offset + length, piece_bytes, VIEW)
        if not count:
            return digests, length
        digests.append(digest)
        length += count
        if count < piece_bytes:
            return digests, length


# inotify(7) event bits of Linux's <sys/inotify.h>.
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_OPEN = 0x20
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
DIRECTORY_EVENTS = (IN_CREATE | IN_OPEN | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
                    | IN_DELETE_SELF | IN_MOVE_SELF)
FILE_EVENTS = IN_OPEN | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE
EVENT_HEADER = struct.Struct("iIII")
# Each followed file keeps one descriptor and one watch open until the scan.
MAX_FOLLOWED_FILES = 256
POLL_SECONDS = 0.02


class FollowedFile:
    """A file that tar is writing, with the digests of the whole pieces already on disk.

    `name_opens` counts the opens of its name seen on its directory's watch, which must be
    tar's and this script's. Once followed, the file's own watch reports opens through any name:
    `opens` must stay 0 and `close_writes` must end at 1 (tar's close). tar changes the
    file's attributes only after its last write, so a write after an attribute change or
    after the close (truncate(2) by name changes both) is `written_late`.
    """

    def __init__(self, path, name_opens):
        self.path = path
        self.name_opens = name_opens
        self.descriptor = None
        self.device = None
        self.inode = None
        self.digests = []
        self.opens = 0
        self.close_writes = 0
        self.attributes_changed = False
        self.written_late = False
        self.complete = False  # closed by tar, every piece but the last hashed
        self.valid = True


class PieceFollower:
    """Hash the pieces of large files while tar writes them, so that the scan reads only the rest.

    A thread follows ROOT with inotify from the start of a session. A regular file created
    under a watched directory is followed once it contains a whole piece: this script opens it,
    watches the file itself and hashes each piece once the file's size has passed its end.
    tar writes a member's data forward only, so the bytes of a piece that it has passed stay
    as they are unless something else writes them. The watches find any such write: another
    open of the file, a second close for writing, or a write after tar's close make the
    follower drop the file, and the scan reads all of it again.

    The digests come from the target's own file, read back through the page cache like the
    scan's reads, never from the stream.

    NOTE: an open through another name (a hard link outside ROOT, /proc/PID/fd) between tar's
    open and this script's file watch is not seen, which leaves a window of about one piece
    of writing. The proof also rests on tar writing each member forward only (GNU tar 1.34
    does, also for sparse members). Without inotify (not Linux, or no ctypes) nothing is
    followed.
    """

    def __init__(self, root, piece_bytes):
        import ctypes

        self.root = root
        self.piece_bytes = piece_bytes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.inotify = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.inotify < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.directories = {}  # watch descriptor -> directory path
        self.candidates = {}  # path -> FollowedFile not yet followed
        self.followed = {}  # path -> FollowedFile
        self.by_watch = {}  # watch descriptor -> FollowedFile
        self.by_inode = {}  # (device, inode) -> FollowedFile
        self.broken = False
        self.view = memoryview(bytearray(BLOCK))
        self.stop_reader, self.stop_writer = os.pipe()
        self.thread = None
        self.watch_directory(root)

    def start(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def stop(self):
        """Stop the thread, then take in every event queued so far.

        inotify queues an event before the system call that caused it returns, so every
        write made before the controller sent "scan" is among them.
        """
        os.write(self.stop_writer, b"x")
        self.thread.join()
        try:
            self.read_events()
        except Exception:
            # Events read but not handled are lost, so no early digest can be trusted.
            self.broken = True

    def run(self):
        import select

        try:
            while True:
                # Waking once per POLL_SECONDS, not per event, keeps the cost of tar's
                # thousands of writes per second low.
                ready, _, _ = select.select([self.stop_reader], [], [], POLL_SECONDS)
                if ready:
                    return
                self.read_events()
                self.check_candidates()
                self.hash_followed()
        except Exception:
            self.broken = True

    def add_watch(self, path, mask):
        watch = self.libc.inotify_add_watch(self.inotify, path, mask)
        if watch < 0:
            self.broken = True
        return watch

    def watch_directory(self, path):
        # Files created in a new directory before its watch exists are never followed,
        # because only an IN_CREATE event makes a file a candidate.
        watch = self.add_watch(path, DIRECTORY_EVENTS)
        if watch >= 0:
            self.directories[watch] = path

    def read_events(self):
        while True:
            try:
                data = os.read(self.inotify, 64 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                watch, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
                name = data[offset + EVENT_HEADER.size:offset + EVENT_HEADER.size + length].rstrip(b"\0")
                offset += EVENT_HEADER.size + length
                self.handle_event(watch, mask, name)

    def handle_event(self, watch, mask, name):
        if mask & IN_Q_OVERFLOW:
            self.broken = True
        elif watch in self.by_watch:
            self.handle_file_event(self.by_watch[watch], mask)
        elif watch in self.directories:
            self.handle_directory_event(self.directories[watch], mask, name)

    def handle_file_event(self, followed, mask):
        if mask & IN_OPEN:
            followed.opens += 1
        if mask & IN_MODIFY and (followed.close_writes or followed.attributes_changed):
            followed.written_late = True
        if mask & IN_ATTRIB:
            followed.attributes_changed = True
        if mask & IN_CLOSE_WRITE:
            followed.close_writes += 1
        if mask & IN_IGNORED:
            followed.valid = False

    def handle_directory_event(self, directory, mask, name):
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            # A directory was removed or moved: the paths of its watch no longer hold.
            self.broken = True
            return
        path = directory + b"/" + name
        if mask & IN_ISDIR:
            if mask & IN_CREATE:
                self.watch_directory(path)
            elif mask & (IN_MOVED_FROM | IN_MOVED_TO):
                self.broken = True
            return
        if mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
            self.forget(path)
        elif mask & IN_CREATE:
            self.forget(path)
            if len(self.followed) + len(self.candidates) < MAX_FOLLOWED_FILES:
                self.candidates[path] = FollowedFile(path, 0)
        elif mask & IN_OPEN:
            for table in (self.candidates, self.followed):
                if path in table:
                    table[path].name_opens += 1
        elif mask & IN_CLOSE_WRITE:
            # tar is done with a file not followed yet: it is read in the scan.
            self.candidates.pop(path, None)

    def forget(self, path):
        self.candidates.pop(path, None)
        followed = self.followed.pop(path, None)
        if followed is not None:
            followed.valid = False

    def check_candidates(self):
        """Follow each candidate that contains a whole piece: open it and watch the file itself."""
        for path, candidate in list(self.candidates.items()):
            try:
                info = os.lstat(path)
            except OSError:
                del self.candidates[path]
                continue
            if not stat.S_ISREG(info.st_mode) or candidate.name_opens != 1:
                del self.candidates[path]
            elif info.st_size >= self.piece_bytes:
                del self.candidates[path]
                self.follow(candidate)

    def follow(self, candidate):
        try:
            descriptor = os.open(candidate.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        info = os.fstat(descriptor)
        # The watch is added through the descriptor, so it is on the inode this script reads.
        watch = self.add_watch(b"/proc/self/fd/%d" % descriptor, FILE_EVENTS)
        if watch < 0 or not stat.S_ISREG(info.st_mode):
            os.close(descriptor)
            return
        candidate.descriptor = descriptor
        candidate.device, candidate.inode = info.st_dev, info.st_ino
        self.followed[candidate.path] = candidate
        self.by_watch[watch] = candidate
        self.by_inode[(info.st_dev, info.st_ino)] = candidate

    def hash_followed(self):
        """Hash every piece that the file's size has passed."""
        for followed in self.followed.values():
            if not followed.valid or followed.complete:
                continue
            closed = followed.close_writes > 0
            size = os.fstat(followed.descriptor).st_size
            while (len(followed.digests) + 1) * self.piece_bytes < size:
                offset = len(followed.digests) * self.piece_bytes
                digest, count = hash_piece(followed.descriptor, offset, self.piece_bytes, self.view)
                if count < self.piece_bytes:
                    followed.valid = False
                    break
                followed.digests.append(digest)
            followed.complete = closed

    def piece_digests(self, info):
        """Return (descriptor, digests of the first whole pieces) for the lstat `info`, or None.

        Returns None unless the file was followed from its creation, nothing but tar's one
        open wrote to it, and it has one link and no holes.
        """
        # truncate(2) by name sends the same event as a write. When tar writes on after
        # one, the cut part becomes a hole, so a file with holes is read in full.
        if self.broken or info.st_nlink != 1 or info.st_blocks < (info.st_size + 511) // 512:
            return None
        followed = self.by_inode.get((info.st_dev, info.st_ino))
        if followed is None or followed.path not in self.followed:
            return None
        unchanged = (followed.valid and followed.name_opens == 2 and followed.opens == 0
                     and followed.close_writes == 1 and not followed.written_late)
        if not unchanged or os.fstat(followed.descriptor).st_size != info.st_size:
            return None
        return followed.descriptor, followed.digests


def start_follower(root, piece_bytes):
    """Start a PieceFollower on ROOT; return None where inotify is not available."""
    try:
        follower = PieceFollower(root, piece_bytes)
    except (ImportError, OSError, AttributeError):
        return None
    follower.start()
    return follower


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


def describe(relative, path, hash_content, with_keys=False, piece_bytes=None, follower=None):
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
    followed = follower.piece_digests(info) if follower is not None and is_file else None
    record = [
        encode(relative), kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
        info.st_size if is_file else 0, info.st_mtime_ns,
        encode(os.readlink(path)) if kind == "symlink" else None,
        os.major(info.st_rdev) if is_device else 0, os.minor(info.st_rdev) if is_device else 0,
        info.st_ino, info.st_nlink,
        [[encode(name), encode(value)] for name, value in sorted(xattrs.items())],
        access, default, sparse,
        file_sha256(path, info.st_size, piece_bytes, followed) if is_file and hash_content else None,
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
    if session and root == b"-":
        request = sys.stdin.readline()
        if not request:
            return
        root = os.fsencode(json.loads(request)["root"])
    follower = start_follower(root, piece_bytes) if session and piece_bytes else None
    if session:
        sys.stdout.write(json.dumps({"ready": True, "following": follower is not None}) + "\n")
        sys.stdout.flush()
    if session:
        request = sys.stdin.readline()
        if request != "scan\n":
            # A move_to before the scan must not look like a move that succeeded.
            sys.exit(2 if request else 0)
    if follower is not None:
        follower.stop()

    out = sys.stdout
    for relative, path in walk(root):
        record = describe(relative, path, hash_content, with_keys, piece_bytes, follower)
        if record is not None:
            out.write(json.dumps(record) + "\n")
    if not session:
        return

    out.write(json.dumps({"end": True, "followed_bytes": FOLLOWED_BYTES[0]}) + "\n")
    out.flush()
    request = sys.stdin.readline()
    if request:
        sys.exit(move_root(root, os.fsencode(json.loads(request)["move_to"])))


main()
