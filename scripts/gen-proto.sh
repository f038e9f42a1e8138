#!/usr/bin/env bash
# Regenerates Sources/Protocol/farside.pb.swift from Sources/Protocol/farside.proto.
#
# - protoc: Debian's protobuf-compiler (installed with apt-get if missing; bookworm has 3.21.12).
# - protoc-gen-swift: built from exactly the swift-protobuf revision pinned in Package.resolved,
#   so the generated code always matches the SwiftProtobuf runtime the package links against.
#   The plugin is built once into .build-protoc/ (git-ignored) and reused while the pin is unchanged.
#
# Re-runnable; the output is byte-identical for the same .proto, protoc and plugin revision.
# Usage: scripts/gen-proto.sh            (regenerate)
#        scripts/gen-proto.sh --check    (regenerate into a temp dir; fail if the committed file differs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

proto_dir=Sources/Protocol
proto=farside.proto
out_file=$proto_dir/farside.pb.swift
work=$root/.build-protoc
repo_url=https://github.com/apple/swift-protobuf

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# 1. protoc
if ! command -v protoc >/dev/null 2>&1; then
  echo "gen-proto: protoc not found; installing protobuf-compiler" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq protobuf-compiler
fi

# 2. The swift-protobuf revision the package resolved.
if [ ! -f Package.resolved ]; then
  echo "gen-proto: Package.resolved missing; resolving packages" >&2
  swift package resolve
fi
pin_field() {  # pin_field revision|version: the swift-protobuf pin's field, from Package.resolved
  awk -v key="\"$1\"" '
    /"identity"/ { inpin = ($0 ~ /"swift-protobuf"/) }
    inpin && /"state"/ { instate = 1; next }
    instate && /\}/ { exit }
    instate && index($0, key) { gsub(/[",]/, ""); print $3; exit }
  ' Package.resolved
}
pin_revision=$(pin_field revision)
pin_version=$(pin_field version)
if [ -z "${pin_revision:-}" ]; then
  echo "gen-proto: swift-protobuf is not pinned in Package.resolved" >&2; exit 1
fi

# 3. protoc-gen-swift at that revision (cached by revision).
plugin=$work/bin/protoc-gen-swift
stamp=$work/bin/protoc-gen-swift.revision
if [ ! -x "$plugin" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$pin_revision" ]; then
  src=$work/src/swift-protobuf
  mkdir -p "$work/src" "$work/bin"
  # Prefer the checkout SwiftPM already made (no network); otherwise the canonical URL.
  origin=$repo_url
  if [ -d .build/checkouts/swift-protobuf/.git ] || [ -f .build/checkouts/swift-protobuf/.git ]; then
    if git -C .build/checkouts/swift-protobuf cat-file -e "$pin_revision^{commit}" 2>/dev/null; then
      origin=$root/.build/checkouts/swift-protobuf
    fi
  fi
  if [ ! -d "$src/.git" ] || ! git -C "$src" cat-file -e "$pin_revision^{commit}" 2>/dev/null; then
    rm -rf "$src"
    echo "gen-proto: cloning swift-protobuf $pin_version ($pin_revision) from $origin" >&2
    git clone --quiet "$origin" "$src"
  fi
  git -C "$src" -c advice.detachedHead=false checkout --quiet --force "$pin_revision"
  echo "gen-proto: building protoc-gen-swift $pin_version (release; takes a few minutes)" >&2
  start=$(date +%s)
  swift build -c release --package-path "$src" --scratch-path "$work/build" --product protoc-gen-swift
  bin_dir=$(swift build -c release --package-path "$src" --scratch-path "$work/build" --show-bin-path)
  install -m 0755 "$bin_dir/protoc-gen-swift" "$plugin"
  echo "$pin_revision" > "$stamp"
  echo "gen-proto: built protoc-gen-swift in $(( $(date +%s) - start ))s" >&2
fi

# 4. Generate. Paths are given relative to -I so the generated header names only "farside.proto".
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc \
  --plugin=protoc-gen-swift="$plugin" \
  --swift_out="$tmp" \
  --swift_opt=Visibility=Public \
  --swift_opt=FileNaming=DropPath \
  -I "$proto_dir" \
  "$proto_dir/$proto"
generated=$tmp/farside.pb.swift
[ -f "$generated" ] || { echo "gen-proto: protoc produced no $generated" >&2; exit 1; }

if [ "$check" -eq 1 ]; then
  if cmp -s "$generated" "$out_file"; then
    echo "gen-proto: $out_file is up to date"
  else
    echo "gen-proto: $out_file is stale; run scripts/gen-proto.sh" >&2
    diff -u "$out_file" "$generated" | head -40 >&2 || true
    exit 1
  fi
else
  if cmp -s "$generated" "$out_file"; then
    echo "gen-proto: $out_file unchanged"
  else
    cp "$generated" "$out_file"
    echo "gen-proto: wrote $out_file (protoc $(protoc --version | awk '{print $2}'), protoc-gen-swift $pin_version)"
  fi
fi
