#!/usr/bin/env bash
# Deliberate-bug check: apply each patch of tests/mutations/ to a scratch copy of HEAD, run the
# tests that should catch it, and say whether they did. The real working tree is never modified.
#
#   bash tests/mutations/run_mutations.sh [--full | --baseline] [NN-name ...]
#
# default     each patch's targets from manifest.txt (quick)
# --full      the README's test command's pytest part (python -m pytest -x -q) for each patch
# --baseline  each patch's targets on HEAD without its patch: they must pass, else "caught" means nothing
# NN-name     only these patches (file name, name without .patch, or just its number NN)
#
# Environment: MUTATION_TIMEOUT (seconds per patch; default 900, 7200 with --full);
#              MUTATION_LOGS=DIR keeps each patch's pytest output as DIR/NN-name.log.
# Exit status: 0 when every mutation was caught (--baseline: every target passed), else 1.

set -uo pipefail

MUT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$MUT_DIR/../.." && pwd)"
MANIFEST="$MUT_DIR/manifest.txt"

full=0
baseline=0
wanted=()
for arg in "$@"; do
    case "$arg" in
        --full) full=1 ;;
        --baseline) baseline=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "run_mutations.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) wanted+=("${arg%.patch}") ;;
    esac
done

if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3)"; fi
limit="${MUTATION_TIMEOUT:-$(( full ? 7200 : 900 ))}"

# manifest: PATCH<TAB>targets<TAB>description; blank lines and # comments skipped
patches=() targets=()
while IFS=$'\t' read -r patch target _description; do
    [[ -z "${patch// }" || "$patch" == \#* ]] && continue
    name="${patch%.patch}"
    if (( ${#wanted[@]} )); then
        keep=0
        for w in "${wanted[@]}"; do
            [[ "$w" == "$name" || "$w" == "${name%%-*}" ]] && keep=1
        done
        (( keep )) || continue
    fi
    patches+=("$patch")
    targets+=("$target")
done < "$MANIFEST"
for w in "${wanted[@]}"; do
    found=0
    for p in "${patches[@]}"; do [[ "${p%.patch}" == "$w" || "${p%%-*}" == "$w" ]] && found=1; done
    (( found )) || { echo "run_mutations.sh: no patch '$w' in $MANIFEST" >&2; exit 2; }
done
(( ${#patches[@]} )) || { echo "run_mutations.sh: no patches to run" >&2; exit 2; }
(( full && baseline )) && { echo "run_mutations.sh: --full and --baseline exclude each other" >&2; exit 2; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dmltune-mutations.XXXXXX")"
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

serial=""
"$PY" -c 'import xdist' 2>/dev/null && serial="-n 0"
echo "mutation check: ${#patches[@]} patch(es) against HEAD $(git -C "$REPO" rev-parse --short HEAD), mode: $( ((full)) && echo full || { ((baseline)) && echo "baseline (no patch)" || echo targets; }), python: $PY"
start=$SECONDS
caught=0
missed=()
checked_import=0
for i in "${!patches[@]}"; do
    patch="${patches[$i]}"
    name="${patch%.patch}"
    scratch="$tmp/${name%%-*}"
    mkdir -p "$scratch"
    git -C "$REPO" archive HEAD | tar -x -C "$scratch"
    # GIT_CEILING_DIRECTORIES: git apply patches the scratch copy as plain files, never a repository
    if (( ! baseline )) && ! (cd "$scratch" && GIT_CEILING_DIRECTORIES="$tmp" git apply "$MUT_DIR/$patch"); then
        echo "ERROR   $patch (does not apply to HEAD)"
        missed+=("$patch")
        rm -rf "$scratch"
        continue
    fi
    export_path="$scratch${PYTHONPATH:+:$PYTHONPATH}"
    if (( ! checked_import )); then
        where="$(cd "$scratch" && PYTHONPATH="$export_path" "$PY" -c 'import dmltune; print(dmltune.__file__)')"
        echo "dmltune is imported from: $where"
        if [[ "$where" != "$scratch/"* ]]; then
            echo "run_mutations.sh: the scratch copy's dmltune is not the one imported; stopping" >&2
            exit 2
        fi
        checked_import=1
    fi
    if (( full )); then
        read -r -a args <<< "-x -q -p no:cacheprovider"
    else  # the targets one after another in one process, also where addopts asks for xdist's -n
        read -r -a args <<< "-x -q -p no:cacheprovider $serial ${targets[$i]}"
    fi
    log="$tmp/$name.log"
    t0=$SECONDS
    (cd "$scratch" && PYTHONPATH="$export_path" timeout --kill-after=30 "$limit" \
        "$PY" -m pytest --basetemp="$scratch/.pytest-tmp" "${args[@]}") > "$log" 2>&1
    rc=$?
    took=$(( SECONDS - t0 ))
    first_failure="$(grep -m1 -E '^(FAILED|ERROR) ' "$log" | cut -c1-200)"
    if (( baseline )); then
        if (( rc == 0 )); then
            echo "passes  $patch's targets without the patch (${took}s)"; caught=$((caught + 1))
        else
            echo "FAILS   $patch's targets without the patch (${took}s, pytest exit $rc): ${first_failure:-}"
            missed+=("$patch")
        fi
    else
        case $rc in
            0)   echo "MISSED  $patch (${took}s): the tests passed"; missed+=("$patch") ;;
            1)   echo "caught  $patch (${took}s): ${first_failure:-see pytest output}"; caught=$((caught + 1)) ;;
            124|137)
                 echo "TIMEOUT $patch (${took}s): pytest ran past ${limit}s (not counted as caught)"; missed+=("$patch") ;;
            *)   echo "ERROR   $patch (${took}s): pytest exit $rc, not a test failure (not counted as caught)"
                 tail -n 15 "$log" | sed 's/^/        /'
                 missed+=("$patch") ;;
        esac
    fi
    if [[ -n "${MUTATION_LOGS:-}" ]]; then
        mkdir -p "$MUTATION_LOGS" && cp "$log" "$MUTATION_LOGS/"
    fi
    rm -rf "$scratch"
done
if (( baseline )); then
    echo "$caught of ${#patches[@]} target sets pass without their patch ($(( SECONDS - start ))s)"
else
    echo "$caught of ${#patches[@]} mutations caught ($(( SECONDS - start ))s)"
fi
if (( ${#missed[@]} )); then
    echo "$( ((baseline)) && echo "failing without a patch" || echo "not caught"): ${missed[*]}"
    exit 1
fi
exit 0
