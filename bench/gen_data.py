#!/usr/bin/env python3
"""Deterministic mixed data set for the bk benchmark (stdlib only).

    python3 bench/gen_data.py OUT_DIR SIZE_MB [SEED]

Writes about SIZE_MB MiB under OUT_DIR, shaped like the uploads/media directory of a web
application:

* ~60% of the bytes are incompressible "media" (photos, videos, archives): pseudo-random
  bytes from a seeded generator, so every run produces the same bytes (unlike
  /dev/urandom) and no two files share content (so dedup-capable tools such as restic and
  borg get no unfair advantage).
* ~40% are text: JSON records, application log lines, CSV exports and prose. Lines are
  drawn at random from a large pool of generated lines (~40 MB, far bigger than zstd's
  level-3 window), so the text compresses like real text (about 3-5x), not like one
  repeated line.
* Thousands of files (~5000 per GiB) in nested folders, from about 1 KiB to ~40 MiB.

The same (SIZE_MB, SEED) always gives byte-identical output.
"""

import math
import os
import random
import sys

MIB = 1 << 20

WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or which "
    "have had not but were all one their has been there more can will would about when "
    "upload image photo video user account order invoice payment customer product price "
    "session token request response error warning timeout retry cache database replica "
    "primary backup restore archive storage bucket object region server client worker "
    "queue message event handler status created updated deleted pending active disabled "
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu "
    "amsterdam berlin chicago dublin edinburgh frankfurt geneva helsinki istanbul "
    "johannesburg kyoto lisbon madrid nairobi oslo paris quito rome stockholm toronto "
    "vienna warsaw zurich small medium large thumbnail original resized cropped rotated "
    "approved rejected shipped delivered refunded cancelled subscription monthly yearly "
    "trial premium basic enterprise feature flag rollout experiment variant control "
    "latency throughput bandwidth memory processor thread lock mutex channel stream"
).split()

# Extra pseudo-words make the vocabulary big enough (a few thousand entries) that text
# does not compress absurdly well.
SYLLABLES = "ka ro mi ta ne lu so vi da pe zo ri fa gu be ho ly xe qu wa".split()

LEVELS = ["DEBUG", "INFO", "INFO", "INFO", "WARN", "ERROR"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"]
PATHS = ["/api/v1/orders", "/api/v1/users", "/uploads", "/login", "/static/app.js",
         "/api/v2/search", "/healthz", "/admin/reports", "/media/thumbnails", "/cart"]


def vocabulary(rng):
    words = list(WORDS)
    for _ in range(3000):
        words.append("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 5))))
    return words


def sentence(rng, words):
    n = rng.randint(5, 18)
    s = " ".join(rng.choices(words, k=n))
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"])


def line_pool(rng, words, count):
    """`count` varied text lines of four kinds (JSON, logs, CSV, prose)."""
    pool = []
    t0 = 1_700_000_000
    for i in range(count):
        kind = i % 4
        ts = t0 + rng.randrange(50_000_000)
        if kind == 0:
            pool.append(
                '{"id":%d,"user":"%s","email":"%s.%s@example.com","created":%d,'
                '"amount":%d.%02d,"currency":"%s","tags":["%s","%s"],"status":"%s",'
                '"note":"%s"}\n'
                % (rng.randrange(10**9), rng.choice(words), rng.choice(words),
                   rng.choice(words), ts, rng.randrange(100000), rng.randrange(100),
                   rng.choice(["EUR", "USD", "GBP", "CHF"]), rng.choice(words),
                   rng.choice(words), rng.choice(words), sentence(rng, words)))
        elif kind == 1:
            pool.append(
                "%d %s [%s] %s %s/%d?q=%s %d %dms worker=%d req=%016x %s\n"
                % (ts, rng.choice(LEVELS), rng.choice(words), rng.choice(METHODS),
                   rng.choice(PATHS), rng.randrange(100000), rng.choice(words),
                   rng.choice([200, 200, 200, 201, 204, 301, 404, 500]),
                   rng.randrange(2000), rng.randrange(16), rng.getrandbits(64),
                   sentence(rng, words)))
        elif kind == 2:
            pool.append(
                "%d,%s,%s,%d,%d.%02d,%s\n"
                % (rng.randrange(10**7), rng.choice(words), rng.choice(words),
                   rng.randrange(1000), rng.randrange(10000), rng.randrange(100),
                   rng.choice(words)))
        else:
            pool.append(" ".join(sentence(rng, words) for _ in range(rng.randint(1, 6)))
                        + "\n")
    return pool


def log_uniform(rng, lo, hi):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def directories(rng, words, count):
    """Nested folder names, 2 to 4 levels deep."""
    dirs = []
    tops = ["uploads", "media", "exports", "logs", "documents"]
    for i in range(count):
        top = tops[i % len(tops)]
        depth = rng.randint(1, 3)
        parts = [top]
        if top in ("uploads", "media"):
            parts += ["%04d" % rng.randint(2019, 2026), "%02d" % rng.randint(1, 12)]
            depth -= 1
        parts += ["%s-%d" % (rng.choice(words), rng.randrange(1000)) for _ in range(depth)]
        dirs.append(os.path.join(*parts))
    return dirs


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    out = sys.argv[1]
    total = int(sys.argv[2]) * MIB
    seed = int(sys.argv[3]) if len(sys.argv) == 4 else 42
    if total <= 0:
        sys.exit("gen_data.py: SIZE_MB must be positive")

    rng = random.Random(seed)
    words = vocabulary(rng)
    pool = line_pool(rng, words, 300_000)
    dirs = directories(rng, words, 400)
    media_exts = [".jpg", ".png", ".mp4", ".webm", ".zip", ".pdf"]
    text_exts = [".json", ".log", ".csv", ".txt", ".md"]

    # Plan the files first: (is_media, size). Media sizes are log-uniform between 4 KiB
    # and 40 MiB (thumbnails to videos); text sizes between 1 KiB and 512 KiB.
    plan = []
    media_goal, text_goal = int(total * 0.6), total - int(total * 0.6)
    got = 0
    while got < media_goal:
        size = min(log_uniform(rng, 4 << 10, 40 * MIB), media_goal - got)
        plan.append((True, size))
        got += size
    got = 0
    while got < text_goal:
        size = min(log_uniform(rng, 1 << 10, 512 << 10), text_goal - got)
        plan.append((False, size))
        got += size
    rng.shuffle(plan)

    written = 0
    for n, (media, size) in enumerate(plan):
        d = os.path.join(out, rng.choice(dirs))
        os.makedirs(d, exist_ok=True)
        ext = rng.choice(media_exts if media else text_exts)
        path = os.path.join(d, "%s-%05d%s" % (rng.choice(words), n, ext))
        with open(path, "wb") as f:
            if media:
                # randbytes in 4 MiB blocks: bounded memory, ~150 MB/s.
                left = size
                while left:
                    k = min(left, 4 * MIB)
                    f.write(rng.randbytes(k))
                    left -= k
            else:
                # Enough random lines to pass `size`, then cut to the exact size.
                buf = []
                have = 0
                while have < size:
                    chunk = rng.choices(pool, k=256)
                    buf.extend(chunk)
                    have += sum(map(len, chunk))
                f.write("".join(buf).encode()[:size])
        written += size
    print("gen_data.py: %d files, %d bytes in %s" % (len(plan), written, out))


if __name__ == "__main__":
    main()
