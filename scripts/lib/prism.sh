# Prism (Stoplight's OpenAPI mock server), used by the Twilio contract test (tests/api/twilio_contract.rs).
# Sourced by scripts/test from the repository root: installs @stoplight/prism-cli@5.14 once under target/prism
# (Node and npm are required) and exports SECUR360_PRISM. The test fails, never skips, when it is missing.
PRISM_VERSION="5.14"
PRISM_DIR="${PRISM_DIR:-$PWD/target/prism}"
if [ ! -x "$PRISM_DIR/node_modules/.bin/prism" ]; then
    echo "installing @stoplight/prism-cli@$PRISM_VERSION into $PRISM_DIR" >&2
    npm install --silent --no-audit --no-fund --prefix "$PRISM_DIR" "@stoplight/prism-cli@$PRISM_VERSION" >&2
fi
export SECUR360_PRISM="$PRISM_DIR/node_modules/.bin/prism"
