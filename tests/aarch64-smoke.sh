#!/usr/bin/env bash
# Cross-builds the release binary for the Pi (aarch64-unknown-linux-gnu) and smoke-tests it
# under qemu: init (encrypted), back up a tree and a stream, check --read-data, restore,
# compare. Installs the cross toolchain and qemu when missing. Usage: bash tests/aarch64-smoke.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target=aarch64-unknown-linux-gnu

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v age-keygen >/dev/null || need+=(age)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cargo build --locked --release --target "$target"
bin="$root/target/$target/release/backuphub"
# ELF e_machine (offset 18) is 0xb7 for AArch64.
[ "$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' ')" = "b700" ] || { echo "not an aarch64 binary: $bin" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bh() { qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" "$@"; }
export BACKUPHUB_STATE_DIR="$work/state" BACKUPHUB_REPO="$work/repo"

mkdir -p "$work/data/sub" "$work/data/empty-dir"
printf 'hello from the pi\n' > "$work/data/hello.txt"
head -c 5000000 /dev/urandom > "$work/data/sub/random.bin"
: > "$work/data/empty"
ln -s hello.txt "$work/data/link"
age-keygen -o "$work/id.txt" 2>/dev/null
bh init --recipient "$(age-keygen -y "$work/id.txt")"
bh backup --job tree "$work/data"
head -c 3000000 /dev/urandom | tee "$work/stream.bin" | bh backup --job stream --stdin --name stream.bin
bh check --read-data --identity "$work/id.txt"
bh restore latest:tree --target "$work/out" --identity "$work/id.txt"
diff -r "$work/data" "$work/out/${work#/}/data"
bh cat latest:stream stream.bin --identity "$work/id.txt" | cmp - "$work/stream.bin"
echo "aarch64 smoke test passed"
