#!/usr/bin/env bash
# A newcomer's first build: a fresh tokio crate outside this workspace (so
# without the workspace's `--cfg madsim`), depending on ringfence with
# `default-features = false`, whose main.rs is the README's library example
# copied unchanged. It must build and run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

# The README's `[dependencies]` block, with the path pointing at this checkout.
mkdir -p "$dir/src"
{
  printf '[package]\nname = "newcomer"\nversion = "0.1.0"\nedition = "2021"\n\n'
  awk '/^## Use it as a library/ {s=1} s && /^```toml/ {t=1; next} t && /^```/ {exit} t' "$repo/README.md" |
    sed "s|path = \"../ringfence\"|path = \"$repo\"|"
} >"$dir/Cargo.toml"
awk '/^## Use it as a library/ {s=1} s && /^```rust/ {t=1; next} t && /^```/ {exit} t' "$repo/README.md" >"$dir/src/main.rs"
grep -q 'default-features = false' "$dir/Cargo.toml" || { echo "README has no library [dependencies] block" >&2; exit 1; }
grep -q 'fn main' "$dir/src/main.rs" || { echo "README has no library example" >&2; exit 1; }

# Resolve to the versions this checkout was tested with.
cp "$repo/Cargo.lock" "$dir/Cargo.lock"
cd "$dir"
unset RUSTFLAGS RUSTDOCFLAGS
cargo run --quiet
echo "fresh crate: README library example built and ran"
