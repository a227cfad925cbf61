# shellcheck shell=bash
# Prism (Stoplight's OpenAPI mock server), used by the Twilio contract test (tests/api/twilio_contract.rs).
# Source this file, then call `s360_prism_ensure`: it installs @stoplight/prism-cli@5.14 once under
# target/prism (Node and npm are required) and exports SECUR360_PRISM. The test fails, never skips, without it.

s360_prism_ensure() {
    local version="5.14" dir="${PRISM_DIR:-$PWD/target/prism}"
    if ! command -v npm >/dev/null 2>&1; then
        echo "s360_prism_ensure: npm is required to install @stoplight/prism-cli@$version" >&2
        return 1
    fi
    if [ ! -x "$dir/node_modules/.bin/prism" ]; then
        echo "s360_prism_ensure: installing @stoplight/prism-cli@$version into $dir" >&2
        npm install --silent --no-audit --no-fund --prefix "$dir" "@stoplight/prism-cli@$version" >&2 \
            || { echo "s360_prism_ensure: npm install failed" >&2; return 1; }
    fi
    export SECUR360_PRISM="$dir/node_modules/.bin/prism"
}
