#!/usr/bin/env bash
# Deployment smoke test, run by .ci/run on every landing: `sam build` + `sam deploy` of template.yaml into
# ministack, a one-process AWS emulator installed with pip (no Docker, no account), then the bundled SIFT
# index uploaded into the stack's bucket and one filtered query through the deployed coordinator. It catches
# template wiring errors (names, !Ref / !Sub, environment, layer contents) that the local stack cannot, since
# the local stack reads the template but runs the functions from source.
#
#   bash infra/smoke_ministack.sh          # about 40 s, plus about 50 s of installs into a fresh venv
#
# Needs the project venv (pip install -e '.[dev]'; PYTHON=... names another interpreter), a python3.12 (on
# PATH or pyenv's: infra/build_layer.py --which-python) and PyPI. ministack and the SAM CLI pin boto3 1.43,
# so they get their own python3.12 venv from infra/smoke-requirements.txt (pinned) in a temporary folder, or
# in SMOKE_TOOLS=/path/to/venv to reuse one. python3.12 because ministack runs Lambda workers on its own
# interpreter and the layer holds cp312 wheels and bytecode; sam build checks for python3.12 too. ministack
# listens on 127.0.0.1 only and is stopped, with its workers, on any exit; the temporary folder goes with it.
# Each step has a time limit (SMOKE_STEP_TIMEOUT seconds, default 900), so a hang fails instead of waiting.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
STACK="${SMOKE_STACK:-squash-smoke}"
STEP_TIMEOUT="${SMOKE_STEP_TIMEOUT:-900}"
WORK="$(mktemp -d -t squash-smoke-XXXXXX)"
MINISTACK_PID=""
STARTED=$SECONDS

fail() {
    echo "smoke: FAILED: $*" >&2
    exit 1
}

cleanup() {
    local status=$?
    if [ -n "$MINISTACK_PID" ]; then
        # ministack leads its own process group (setsid below) and runs Lambda workers in it: stop them all.
        kill -TERM -- "-$MINISTACK_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$MINISTACK_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$MINISTACK_PID" 2>/dev/null || true
        wait "$MINISTACK_PID" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -s "$WORK/ministack.log" ]; then
        echo "smoke: last lines of the ministack log:" >&2
        tail -n 40 "$WORK/ministack.log" >&2
    fi
    rm -rf "$WORK"
    if [ "$status" -eq 0 ]; then
        echo "smoke: OK in $((SECONDS - STARTED)) s"
    else
        echo "smoke: FAILED (exit $status) after $((SECONDS - STARTED)) s" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$PYTHON" ] || fail "no project interpreter at $PYTHON (python3 -m venv .venv && .venv/bin/pip install -e '.[dev]')"
PY312="$("$PYTHON" "$REPO/infra/build_layer.py" --which-python)" || fail "no python3.12 (see the message above)"
TOOLS="${SMOKE_TOOLS:-$WORK/tools}"
echo "smoke: installing the pinned ministack and SAM CLI into $TOOLS with $PY312"
[ -x "$TOOLS/bin/pip" ] || "$PY312" -m venv "$TOOLS"
if ! timeout "$STEP_TIMEOUT" "$TOOLS/bin/pip" install --quiet --disable-pip-version-check \
    -r "$REPO/infra/smoke-requirements.txt" >"$WORK/install.log" 2>&1; then
    tail -n 40 "$WORK/install.log" >&2
    fail "installing infra/smoke-requirements.txt"
fi
echo "smoke: tools ready after $((SECONDS - STARTED)) s"

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/tmp" "$WORK/run"
# ministack leaves its Lambda workers' temporary folders behind: keep them inside $WORK.
(cd "$WORK/run" && TMPDIR="$WORK/tmp" BIND_HOST=127.0.0.1 GATEWAY_PORT="$PORT" \
    exec setsid "$TOOLS/bin/ministack" >"$WORK/ministack.log" 2>&1) &
MINISTACK_PID=$!
for _ in $(seq 300); do
    "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    kill -0 "$MINISTACK_PID" 2>/dev/null || fail "ministack exited before listening"
    sleep 0.2
done
"$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null ||
    fail "ministack is not listening on 127.0.0.1:$PORT after 60 s"
echo "smoke: ministack on 127.0.0.1:$PORT (pid $MINISTACK_PID)"

export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL_LAMBDA
export SAM_CLI_TELEMETRY=0

cd "$REPO"
timeout --kill-after=20 "$STEP_TIMEOUT" "$PYTHON" infra/deploy.py --stack-name "$STACK" --sam "$TOOLS/bin/sam" \
    --rebuild-layer --check || fail "infra/deploy.py --check (layer, sam build, sam deploy, upload, query)"
