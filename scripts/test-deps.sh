#!/usr/bin/env bash
# Installs what the end-to-end tests talk to, on a fresh Debian 12 machine (as root).
# Idempotent: skips what is already there. Each part of bk's test suite adds its
# services here, never by hand.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have age || need+=(age)
have zstd || need+=(zstd)
have tar || need+=(tar)
have b3sum || need+=(b3sum)
# SSH and PostgreSQL sources (tests/harness/sshd.rs, tests/harness/postgres.rs).
test -x /usr/sbin/sshd || need+=(openssh-server)
have ssh || need+=(openssh-client)
test -x /usr/lib/postgresql/15/bin/initdb || need+=(postgresql-15)
have pg_restore || need+=(postgresql-client-15)
have flock || need+=(util-linux)
# A real browser for the status page (tests/harness/chromium.rs); jq for docs/disaster-recovery.md.
have chromium || need+=(chromium)
have jq || need+=(jq)
# MariaDB primary + replica for mysql jobs (tests/harness/mariadb.rs).
have mariadbd || test -x /usr/sbin/mariadbd || need+=(mariadb-server)
have mariadb || need+=(mariadb-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# moto's S3 server (strict conditional writes, like AWS) and boto3 for inspecting buckets.
python3 -c 'import moto.server, boto3' 2>/dev/null || pip install -q 'moto[server]'

# Azurite (Azure Blob emulator) and the Azure SDK for Python to create its containers.
command -v azurite-blob >/dev/null 2>&1 || npm install -g --silent azurite
python3 -c 'import azure.storage.blob' 2>/dev/null || pip install -q azure-storage-blob

# Garage (persistent, distributed S3; ignores create-only writes). Not packaged by
# Debian: built from crates.io with the trimmed recipe measured in TESTBED.md
# (about 5.5 minutes on 2 cores), only when it is not installed yet.
if ! command -v garage >/dev/null 2>&1; then
  echo "building garage (once; ~6 minutes)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install --quiet garage --locked \
    --no-default-features --features bundled-libs,sqlite
fi

# cargo-fuzz, for scripts/fuzz.sh (the fuzz targets of fuzz/, run by scripts/test.sh).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet cargo-fuzz --locked
