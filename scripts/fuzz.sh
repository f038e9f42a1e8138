#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, with AddressSanitizer and LeakSanitizer) of Farside's
# parsers and decoders: scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS  how long each target runs (default 60)
#   TARGET   GGUF Safetensors Config Wire Tokenizer ChatTemplate Request (default: all)
#
# Builds the targets (Fuzz/FuzzTARGET/, declared in Package.swift only when FARSIDE_FUZZ=1) in
# their own scratch path .build-fuzz, then runs each on its committed corpus Fuzz/corpus/TARGET
# (read-only: new inputs go to .build-fuzz/corpus/TARGET). Exits non-zero if any target crashed,
# hung (-timeout), leaked or went over its memory limit, and prints where the reproducer is
# (fuzz-artifacts/TARGET/). Environment:
#   FUZZ_MERGE=1      afterwards, minimise committed corpus + new inputs into Fuzz/corpus/TARGET
#                     (seed-* and regress-* files kept; other inputs over 2 KB dropped)
#   FUZZ_JOBS=N       build jobs (default 2)
#   FUZZ_RESULTS=FILE append one line per target: "TARGET ok" or "TARGET failed"
#   FUZZ_TIMEOUT=S    seconds one input may take before it counts as a hang (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
all=(GGUF Safetensors Config Wire Tokenizer ChatTemplate Request)
seconds=60
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$t' (one of: ${all[*]})" >&2; exit 2; }
done
scratch=.build-fuzz
# -sanitize=fuzzer,address as one flag: swiftc keeps only the last -sanitize= it is given, and
# SwiftPM's --sanitize passes each on its own (--sanitize=fuzzer is still needed: it makes
# SwiftPM link the executables without a main of their own).
build=(swift build --scratch-path "$scratch" -j "${FUZZ_JOBS:-2}" --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address)
build_start=$SECONDS
for t in "${targets[@]}"; do
  echo "fuzz: building Fuzz$t"
  # The gold linker warns once per ASan symbol; everything else is shown.
  FARSIDE_FUZZ=1 "${build[@]}" --product "Fuzz$t" 2>&1 | { grep -v "ld.gold: warning: Cannot export local symbol" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz: build of Fuzz$t failed" >&2; exit 1; }
done
bin=$(FARSIDE_FUZZ=1 "${build[@]}" --show-bin-path)
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - build_start)) s"

# Largest input per target: whole small model files for the file formats, less for the rest.
max_len() {
  case $1 in GGUF) echo 65536 ;; Safetensors | Tokenizer) echo 32768 ;; ChatTemplate) echo 16384 ;; *) echo 8192 ;; esac
}

failed=0
for t in "${targets[@]}"; do
  corpus=Fuzz/corpus/$t work=$scratch/corpus/$t artifacts=fuzz-artifacts/$t/
  mkdir -p "$corpus" "$work" "$artifacts"
  if [ "$t" = Wire ] && [ -z "$(ls -A "$corpus")" ]; then
    FARSIDE_FUZZ_WRITE_SEEDS="$corpus" "$bin/FuzzWire"
  fi
  log=$scratch/fuzz-$t.log
  echo "fuzz: $t for ${seconds}s (corpus $corpus, $(ls "$corpus" | wc -l) inputs)"
  set +e
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 "$bin/Fuzz$t" "$work" "$corpus" \
    -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -detect_leaks=1 -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="$artifacts" >"$log" 2>&1
  status=$?
  set -e
  stats=$(grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$log" | sed 's/stat:://' | tr '\n' ' ')
  cov=$(grep -Eo "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9A-Za-z]+" "$log" | tail -1)
  if [ $status -eq 0 ]; then
    echo "fuzz: $t ok: $stats $cov"
    [ -n "${FUZZ_RESULTS:-}" ] && echo "$t ok" >>"$FUZZ_RESULTS"
  else
    failed=$((failed + 1))
    echo "fuzz: $t FAILED (exit $status); the end of its log ($log):"
    grep -v "^#[0-9]" "$log" | tail -40
    reproducer=$(grep -Eo "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
    echo "fuzz: $t reproducer: ${reproducer:-none written (see the log)}; rerun: FARSIDE_FUZZ=1 $bin/Fuzz$t ${reproducer:-FILE}"
    [ -n "${FUZZ_RESULTS:-}" ] && echo "$t failed" >>"$FUZZ_RESULTS"
  fi
  if [ "${FUZZ_MERGE:-0}" = 1 ] && [ $status -eq 0 ]; then
    merged=$scratch/merged/$t
    rm -rf "$merged" && mkdir -p "$merged"
    "$bin/Fuzz$t" -merge=1 -max_len="$(max_len "$t")" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 "$merged" "$corpus" "$work" >"$scratch/merge-$t.log" 2>&1
    # Seeds (seed-*, from scripts/make-fuzz-seeds.py) and reproducers of fixed bugs (regress-*)
    # stay under their names; of the rest, only
    # inputs up to 2 KB are kept, so the committed corpus stays small.
    for f in "$corpus"/seed-* "$corpus"/regress-*; do
      [ -e "$f" ] || continue
      cp "$f" "$merged/" && rm -f "$merged/$(sha1sum "$f" | cut -d' ' -f1)"
    done
    find "$merged" -type f ! -name 'seed-*' ! -name 'regress-*' -size +2048c -delete
    rm -rf "$corpus" && mv "$merged" "$corpus"
    echo "fuzz: $t corpus minimised: $(ls "$corpus" | wc -l) inputs, $(du -sk "$corpus" | cut -f1) KB"
  fi
done
[ $failed -eq 0 ] || { echo "fuzz: $failed of ${#targets[@]} targets failed"; exit 1; }
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a crash, hang or leak"
