#!/usr/bin/env bash
# Builds the README's quick start as a project of its own, exactly as written: its Cargo.toml
# block and its main.rs block, with `redis-guard` taken from this checkout (same version) and
# this checkout's Cargo.lock, so dependency versions and build artefacts are shared.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
project="$(mktemp -d)"
trap 'rm -rf "$project"' EXIT

# The first ```toml block and the first ```rust block after "## Quick start".
block() {
    awk -v fence="$1" '
        /^## Quick start/ { in_section = 1; next }
        in_section && /^## / { exit }
        in_section && $0 ~ "^```" fence { copying = 1; next }
        copying && /^```/ { exit }
        copying { print }
    ' "$root/README.md"
}
mkdir -p "$project/src"
block toml > "$project/Cargo.toml"
block rust > "$project/src/main.rs"
for file in Cargo.toml src/main.rs; do
    [ -s "$project/$file" ] || { echo "README.md: no quick start $file block found" >&2; exit 1; }
done
grep -q '^redis-guard = "' "$project/Cargo.toml" || {
    echo 'README.md: the quick start Cargo.toml must depend on redis-guard = "<version>"' >&2
    exit 1
}
sed -i -E "s|^redis-guard = \"([^\"]+)\"|redis-guard = { version = \"\\1\", path = \"$root\" }|" \
    "$project/Cargo.toml"
cp "$root/Cargo.lock" "$project/Cargo.lock"
echo "building the README's quick start in $project"
"${CARGO:-cargo}" build --quiet --manifest-path "$project/Cargo.toml"
echo "the README's quick start builds as written"
