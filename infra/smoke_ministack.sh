#!/usr/bin/env bash
# Opt-in deployment smoke test (not part of pytest): `sam build` + `sam deploy` of template.yaml into
# ministack, a one-process AWS emulator installed with pip (no Docker, no account), then the bundled SIFT
# index uploaded into the stack's bucket and one filtered query through the deployed coordinator. It catches
# template wiring errors (names, !Ref / !Sub, environment, layer contents) that the local stack cannot, since
# the local stack reads the template but runs the functions from source.
#
#   bash infra/smoke_ministack.sh
#
# Needs the project venv (pip install -e '.[dev]'), python3.12 on PATH and PyPI. ministack and the SAM CLI
# pin boto3 1.43, so they get their own venv in a temporary folder (SMOKE_TOOLS=/path/to/venv reuses one).
# That venv is made with python3.12 because ministack runs Lambda workers on its own interpreter, and the
# layer holds wheels for the template's Runtime (cp312); sam build also checks for python3.12. ministack
# listens on 127.0.0.1 only; stopping it drops the whole deployment, and the temporary folder goes with it.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
STACK="${SMOKE_STACK:-squash-smoke}"
WORK="$(mktemp -d -t squash-smoke-XXXXXX)"
MINISTACK_PID=""

cleanup() {
    if [ -n "$MINISTACK_PID" ] && kill -0 "$MINISTACK_PID" 2>/dev/null; then
        kill "$MINISTACK_PID"
        wait "$MINISTACK_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

python3.12 --version >/dev/null 2>&1 || { echo "smoke: python3.12 is not on PATH" >&2; exit 1; }
TOOLS="${SMOKE_TOOLS:-$WORK/tools}"
if [ ! -x "$TOOLS/bin/ministack" ] || [ ! -x "$TOOLS/bin/sam" ]; then
    echo "smoke: installing ministack[full] and aws-sam-cli into $TOOLS (a few minutes)"
    python3.12 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet 'ministack[full]' aws-sam-cli
fi

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/tmp" "$WORK/run"
# ministack leaves its Lambda workers' temporary folders behind: keep them inside $WORK.
(cd "$WORK/run" && TMPDIR="$WORK/tmp" BIND_HOST=127.0.0.1 GATEWAY_PORT="$PORT" \
    exec "$TOOLS/bin/ministack" >"$WORK/ministack.log" 2>&1) &
MINISTACK_PID=$!
for _ in $(seq 100); do
    "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.2
done
echo "smoke: ministack on 127.0.0.1:$PORT (pid $MINISTACK_PID)"

export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL_LAMBDA
export SAM_CLI_TELEMETRY=0

cd "$REPO"
if ! "$PYTHON" infra/deploy.py --stack-name "$STACK" --sam "$TOOLS/bin/sam" --check; then
    echo "smoke: FAILED; last lines of the ministack log:" >&2
    tail -n 40 "$WORK/ministack.log" >&2
    exit 1
fi
echo "smoke: OK"
