#!/usr/bin/env bash
# The two-minute demo on embedded defaults: a real backup of a real local directory
# into a local repository, encrypted to a freshly generated key, then an end-to-end
# `restore --verify` of it. Usage: scripts/quickstart.sh [DIRECTORY_TO_BACK_UP]
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir="${1:-/usr/share/doc}"
demo="${BK_DEMO_DIR:-/tmp/bk-quickstart}"

echo "==> building bk (release)"
cargo build --release --quiet -p bk-client
bk="$PWD/target/release/bk"

# Start from a clean demo directory, but never delete anything bk did not create.
if [ -e "$demo" ]; then
  if [ -f "$demo/.bk-quickstart" ]; then rm -rf "$demo"; else
    echo "$demo exists and is not a bk quickstart directory; set BK_DEMO_DIR" >&2; exit 2
  fi
fi

echo "==> bk init $demo/config (config, local repository, new age key pair)"
mkdir -p "$demo" && touch "$demo/.bk-quickstart"
# The identity goes outside the configuration directory (in real life: offline).
"$bk" init "$demo/config" --source "$source_dir" --identity "$demo/identity.age"
cfg="$demo/config/bk.toml"

echo; echo "==> bk config check   (validates, then checks the repository and the job's source)"
"$bk" --config "$cfg" config check

echo; echo "==> bk run example   (backs up $source_dir)"
"$bk" --config "$cfg" run example
echo; echo "==> bk list"
"$bk" --config "$cfg" list
echo; echo "==> bk restore example latest --verify   (download, decrypt, decompress, check every file)"
"$bk" --config "$cfg" restore example latest --identity "$demo/identity.age" --verify
echo; echo "==> bk verify   (key-less integrity scrub)"
"$bk" --config "$cfg" verify
echo; echo "==> bk status"
"$bk" --config "$cfg" status
echo
echo "Everything above is in $demo. Restore the files with:"
echo "  $bk --config $cfg restore example latest --identity $demo/identity.age --to /tmp/restored"
