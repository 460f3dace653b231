#!/usr/bin/env python3
"""Fill a local bk repository with many committed backups, for bench/scale.sh.

    python3 bench/scale_repo.py TEMPLATE_REPO TEMPLATE_COMMIT OUT_REPO BACKUPS JOBS PREFIX

TEMPLATE_REPO is a repository holding one real backup made by `bk run`, and
TEMPLATE_COMMIT that backup's commit.json: every generated commit record is a copy of
it with only backup_id, job, started, finished and the two object keys changed, so the
JSON shape is exactly what this bk writes (docs/format.md). Each generated backup's
payload.age and manifest.age are hard links to one copy of the template's (same
bytes, so the sizes and BLAKE3 hashes in the copied record stay true, at no cost); the
manifests' encrypted headers still name the template backup, so these backups are
for listing, not for restoring.

BACKUPS backups are spread round-robin over JOBS jobs named PREFIX001, PREFIX002, …,
one backup started per minute, the newest one a minute ago. Backup IDs follow the
real format (UTC start to the millisecond, '-', 16 hex digits) with the random part
drawn from a seeded generator. One process writes everything: the work is nearly all
file-system calls, and two writers on one file system were slower than one.
"""

import datetime as dt
import json
import os
import random
import shutil
import sys


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    template_repo, template_commit, out, backups, jobs, prefix = sys.argv[1:]
    backups, jobs = int(backups), int(jobs)
    if backups < 1 or jobs < 1:
        sys.exit("scale_repo.py: BACKUPS and JOBS must be positive")

    template = json.load(open(template_commit))
    if template.get("format") != "bk-commit":
        sys.exit(f"scale_repo.py: {template_commit} is not a bk commit record")
    tdir = os.path.dirname(template_commit)
    t_payload = os.fsencode(os.path.join(tdir, "payload.age"))
    t_manifest = os.fsencode(os.path.join(tdir, "manifest.age"))
    for f in (t_payload, t_manifest):
        if not os.path.isfile(f):
            sys.exit(f"scale_repo.py: the template backup has no {f}")
    t_started = dt.datetime.fromisoformat(template["started"][:26].rstrip("Z"))
    t_finished = dt.datetime.fromisoformat(template["finished"][:26].rstrip("Z"))
    run_time = max(t_finished - t_started, dt.timedelta(milliseconds=1))

    os.makedirs(os.path.join(out, "backups"), exist_ok=True)
    shutil.copyfile(
        os.path.join(template_repo, "bk-repository.json"),
        os.path.join(out, "bk-repository.json"),
    )

    width = max(3, len(str(jobs)))
    names = [f"{prefix}{j + 1:0{width}d}" for j in range(jobs)]
    for name in names:
        os.makedirs(os.path.join(out, "backups", name), exist_ok=True)
    # The record's text once, with placeholders: json.dump with indent is pure Python
    # and would dominate the run time.
    marks = {"@@BACKUP_ID@@", "@@JOB@@", "@@STARTED@@", "@@FINISHED@@"}
    shape = dict(template)
    shape.update(
        backup_id="@@BACKUP_ID@@",
        job="@@JOB@@",
        started="@@STARTED@@",
        finished="@@FINISHED@@",
        payload=dict(template["payload"], key="backups/@@JOB@@/@@BACKUP_ID@@/payload.age"),
        manifest=dict(template["manifest"], key="backups/@@JOB@@/@@BACKUP_ID@@/manifest.age"),
    )
    text = json.dumps(shape, indent=2) + "\n"
    if any(m in json.dumps(template) for m in marks) or "%" in text:
        sys.exit("scale_repo.py: the template commit record holds a placeholder or '%'")
    for mark, field in (("@@BACKUP_ID@@", "id"), ("@@JOB@@", "job"),
                        ("@@STARTED@@", "started"), ("@@FINISHED@@", "finished")):
        text = text.replace(mark, "%%(%s)s" % field)
    out_b = os.fsencode(out)
    names_b = [n.encode() for n in names]

    rng = random.Random(42)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    first = now - dt.timedelta(minutes=backups)
    minute, milli = dt.timedelta(minutes=1), dt.timedelta(milliseconds=1)
    text = text.encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(backups):
        started = first + i * minute + rng.randrange(1000) * milli
        s = started.isoformat(timespec="microseconds")  # 2026-11-25T11:08:02.123000
        fields = {
            # 20261125T110802.123Z-3fa9c1d27be04c11
            b"id": b"%s%s%sT%s%s%s.%sZ-%016x" % (
                s[0:4].encode(), s[5:7].encode(), s[8:10].encode(), s[11:13].encode(),
                s[14:16].encode(), s[17:19].encode(), s[20:23].encode(), rng.getrandbits(64)),
            b"job": names_b[i % jobs],
            b"started": s.encode() + b"Z",
            b"finished": (started + run_time).isoformat(timespec="microseconds").encode() + b"Z",
        }
        d = b"%s/backups/%s/%s" % (out_b, fields[b"job"], fields[b"id"])
        os.mkdir(d)
        if i == 0:
            # The first backup gets copies of the template's objects, and every other
            # one hard links to those (on the same file system, whatever the template's).
            shutil.copyfile(t_payload, d + b"/payload.age")
            shutil.copyfile(t_manifest, d + b"/manifest.age")
            t_payload, t_manifest = d + b"/payload.age", d + b"/manifest.age"
        else:
            os.link(t_payload, d + b"/payload.age")
            os.link(t_manifest, d + b"/manifest.age")
        # Written last, as bk does.
        fd = os.open(d + b"/commit.json", flags, 0o644)
        try:
            os.write(fd, text % fields)
        finally:
            os.close(fd)
    print(f"scale_repo.py: {backups} backups of {jobs} jobs in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
