# shellcheck shell=bash
# Python peers for the signature/provider tests (stripe, twilio, localstripe).
# s360_peers_ensure builds target/peers-venv when missing or when
# tests/peers/requirements*.txt or the base python changed, and exports
# SECUR360_TEST_PYTHON. Expects to run from the repository root.

s360_peers_ensure() {
    local venv="$PWD/target/peers-venv" req="tests/peers/requirements.txt" lock="tests/peers/requirements.lock.txt"
    local base=${SECUR360_PYTHON_BASE:-python3}
    [[ -f "$req" ]] || { printf 'error: %s not found\n' "$req" >&2; exit 1; }
    command -v "$base" >/dev/null 2>&1 || { printf 'error: %s not found (CPython 3.11 needed for the test peers)\n' "$base" >&2; exit 1; }

    local want
    want=$( { cat "$req"; [[ -f "$lock" ]] && cat "$lock"; "$base" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
    if [[ -x "$venv/bin/python" && -f "$venv/.requirements.sha256" && "$(cat "$venv/.requirements.sha256")" == "$want" ]]; then
        export SECUR360_TEST_PYTHON="$venv/bin/python"
        return 0
    fi

    printf 'peers: building %s from %s\n' "${venv#"$PWD"/}" "$req" >&2
    local start=$SECONDS
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$base" -m venv "$venv" \
        || { printf 'error: "%s -m venv" failed (Debian: apt-get install python3-venv)\n' "$base" >&2; exit 1; }
    local constraints=()
    [[ -f "$lock" ]] && constraints=(-c "$lock")
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" "${constraints[@]}" \
        || { printf 'error: pip install -r %s failed (venv left in %s)\n' "$req" "$venv" >&2; exit 1; }
    "$venv/bin/python" -m pip check -q >/dev/null \
        || { printf 'error: pip check failed in %s:\n' "$venv" >&2; "$venv/bin/python" -m pip check >&2 || true; exit 1; }
    printf '%s\n' "$want" >"$venv/.requirements.sha256"
    printf 'peers: built in %ss\n' "$((SECONDS - start))" >&2
    export SECUR360_TEST_PYTHON="$venv/bin/python"
}
