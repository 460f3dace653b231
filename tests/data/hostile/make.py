#!/usr/bin/env python3
"""Writes the crafted archives a compromised source host sends as its "tar".

Each archive holds one way of turning a restore against the operator; the tests
(tests/e2e/hostile.rs, fuzz seeds) use the checked-in .tar files, and this script
documents and regenerates them: `python3 tests/data/hostile/make.py`. The output is
deterministic (fixed times, owners and order), so regenerating changes nothing.
"""

import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
EIB = 1 << 60


def info(name, kind=tarfile.REGTYPE, mode=0o644, link="", size=0):
    t = tarfile.TarInfo(name)
    t.type = kind
    t.mode = mode
    t.mtime = 1700000000
    t.uid = t.gid = 0
    t.uname = t.gname = ""
    t.linkname = link
    t.size = size
    return t


def write(name, members):
    """members: TarInfo, or (TarInfo, bytes) for regular files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            if isinstance(m, tuple):
                t, data = m
                t.size = len(data)
                tar.addfile(t, io.BytesIO(data))
            else:
                tar.addfile(m)
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(buf.getvalue())


def root():
    return info("./", tarfile.DIRTYPE, 0o755)


def ok_file():
    return (info("./ok.txt"), b"an innocent file first\n")


def main():
    # Paths that leave the target directory.
    write("absolute_path.tar", [root(), ok_file(),
                                (info("/tmp/bk-hostile-absolute"), b"owned\n")])
    write("dotdot_path.tar", [root(), ok_file(),
                              (info("./../bk-hostile-dotdot"), b"owned\n")])
    # Symlinks leading out, and entries written through them.
    write("symlink_absolute.tar", [root(), ok_file(),
                                   info("./evil", tarfile.SYMTYPE, 0o777, "/tmp"),
                                   (info("./evil/bk-hostile-symlink-absolute"), b"owned\n")])
    write("symlink_climbs_out.tar", [root(), info("./dir/", tarfile.DIRTYPE, 0o755),
                                     info("./dir/evil", tarfile.SYMTYPE, 0o777, "../.."),
                                     (info("./dir/evil/bk-hostile-climbs-out"), b"owned\n")])
    # `self -> .` is harmless; `up -> self/..` looks like the root but is its parent.
    write("symlink_chain.tar", [root(), info("./self", tarfile.SYMTYPE, 0o777, "."),
                                info("./up", tarfile.SYMTYPE, 0o777, "self/.."),
                                (info("./up/bk-hostile-chain"), b"owned\n")])
    write("symlink_write_through.tar", [root(), info("./sub/", tarfile.DIRTYPE, 0o755),
                                        info("./alias", tarfile.SYMTYPE, 0o777, "sub"),
                                        (info("./alias/owned"), b"owned\n")])
    # Hard links to files outside, or through a symlink.
    write("hardlink_absolute.tar", [root(), ok_file(),
                                    info("./passwd", tarfile.LNKTYPE, 0o644, "/etc/passwd")])
    write("hardlink_dotdot.tar", [root(), ok_file(),
                                  info("./outside", tarfile.LNKTYPE, 0o644, "../bk-hostile-secret")])
    write("hardlink_through_symlink.tar", [root(), info("./sub/", tarfile.DIRTYPE, 0o755),
                                           (info("./sub/f"), b"inside\n"),
                                           info("./alias", tarfile.SYMTYPE, 0o777, "sub"),
                                           info("./h", tarfile.LNKTYPE, 0o644, "alias/f")])
    # Device nodes and FIFOs.
    null = info("./null", tarfile.CHRTYPE, 0o666)
    null.devmajor, null.devminor = 1, 3
    write("device_char.tar", [root(), ok_file(), null])
    disk = info("./sda", tarfile.BLKTYPE, 0o660)
    disk.devmajor, disk.devminor = 8, 0
    write("device_block.tar", [root(), ok_file(), disk])
    write("fifo.tar", [root(), ok_file(), info("./pipe", tarfile.FIFOTYPE, 0o644)])
    # setuid, setgid and sticky bits: restored without them unless asked.
    write("special_bits.tar", [root(), (info("./tool", mode=0o4755), b"#!/bin/sh\n"),
                               (info("./group-tool", mode=0o2755), b"#!/bin/sh\n"),
                               info("./shared/", tarfile.DIRTYPE, 0o1777)])
    # A header announcing 1 EiB, followed by a few bytes and the end of the stream.
    huge = info("./huge", size=EIB)
    header = huge.tobuf(format=tarfile.GNU_FORMAT)
    body = b"only this much\n".ljust(512, b"\0")
    stream = root().tobuf(format=tarfile.GNU_FORMAT) + header + body + b"\0" * 1024
    with open(os.path.join(HERE, "huge_size.tar"), "wb") as f:
        f.write(stream.ljust(10240, b"\0"))


if __name__ == "__main__":
    main()
