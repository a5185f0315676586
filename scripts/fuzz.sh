#!/usr/bin/env bash
# Runs every Go fuzz target in the module, one after the other, each for
# the given time (go test -fuzztime syntax), and prints how many inputs each
# one tried. `make test` runs it briefly, `make bench` for longer:
#
#   scripts/fuzz.sh 5s
#   scripts/fuzz.sh 2m
#
# Each target first replays its committed seeds (testdata/fuzz/<Name>/), so
# a seed that fails fails the run at once. New failing inputs are written
# next to the seeds; commit them with the fix. FUZZ_PARALLEL sets the fuzzing
# workers per target (default 1: the CI machine's cores are shared).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

fuzztime="${1:-10s}"
parallel="${FUZZ_PARALLEL:-1}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

failed=()
targets=0
while read -r pkg dir; do
	# Fuzz targets are top-level funcs named Fuzz* in the package's tests.
	while read -r name; do
		[[ -n "$name" ]] || continue
		targets=$((targets + 1))
		corpus="$dir/testdata/fuzz/$name"
		before="$(find "$corpus" -type f 2>/dev/null | wc -l)"
		rc=0
		go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" -parallel="$parallel" "$pkg" >"$log" 2>&1 || rc=$?
		after="$(find "$corpus" -type f 2>/dev/null | wc -l)"
		execs="$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)"
		if ((rc != 0)) && ((after == before)) && grep -qx '    context deadline exceeded' "$log" &&
			! grep -q 'failure while testing seed corpus' "$log"; then
			# Go's fuzz coordinator can report its own -fuzztime deadline
			# as a failure, with no failing input (golang/go#75804, fixed
			# in Go 1.27). Only a written input or a failing seed fails.
			echo "fuzz: ok   ${pkg#github.com/relaygate/relaygate/} ${name}: ${execs:-0} inputs in ${fuzztime} (ignored Go's spurious 'context deadline exceeded', golang/go#75804)"
			rc=0
		elif ((rc == 0)); then
			echo "fuzz: ok   ${pkg#github.com/relaygate/relaygate/} ${name}: ${execs:-0} inputs in ${fuzztime}"
		fi
		if ((rc != 0)); then
			echo "fuzz: FAIL ${pkg#github.com/relaygate/relaygate/} ${name}:"
			grep -vE '^fuzz: elapsed' "$log" | sed 's/^/    /'
			failed+=("$name")
		fi
	done < <(grep -hoE '^func Fuzz[A-Za-z0-9_]*\(' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(/\1/' | sort -u)
done < <(go list -f '{{.ImportPath}} {{.Dir}}' ./...)

if ((targets == 0)); then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
if ((${#failed[@]})); then
	echo "fuzz: ${#failed[@]} of ${targets} targets failed: ${failed[*]}" >&2
	exit 1
fi
echo "fuzz: all ${targets} targets passed (${fuzztime} each)"
