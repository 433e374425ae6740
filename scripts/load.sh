#!/usr/bin/env bash
# load.sh: a bounded load run against the demo (scripts/demo.sh) with wrk. Fails when
# wrk sees any non-2xx/3xx answer or socket error, so it doubles as a smoke test.
#
# Environment: LOAD_URL (http://127.0.0.1:8080/), LOAD_DURATION (10s),
# LOAD_CONNECTIONS (50), LOAD_THREADS (2).

set -euo pipefail

url=${LOAD_URL:-http://127.0.0.1:8080/}
duration=${LOAD_DURATION:-10s}
connections=${LOAD_CONNECTIONS:-50}
threads=${LOAD_THREADS:-2}

if ! command -v wrk >/dev/null 2>&1; then
    echo "load: wrk is not installed; install it with 'sudo apt-get install wrk' (or 'brew install wrk')" >&2
    exit 1
fi
# wrk refuses fewer connections than threads.
if ((connections < threads)); then
    threads=$connections
fi

echo "load: wrk -t$threads -c$connections -d$duration $url"
status=0
summary=$(wrk "-t$threads" "-c$connections" "-d$duration" "$url" 2>&1) || status=$?
printf '%s\n' "$summary"
if ((status != 0)); then
    echo "load: wrk failed (status $status)" >&2
    exit 1
fi

failed=0
# wrk prints these lines only when their counts are not zero, but check the numbers
# anyway in case a version prints zeros.
non_success=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' <<<"$summary")
if [[ -n $non_success ]] && ((non_success > 0)); then
    echo "load: FAIL: $non_success non-2xx/3xx responses" >&2
    failed=1
fi
socket_errors=$(sed -n 's/^ *Socket errors: *//p' <<<"$summary")
if [[ -n $socket_errors ]]; then
    total=0
    for n in $(grep -o '[0-9][0-9]*' <<<"$socket_errors"); do
        total=$((total + n))
    done
    if ((total > 0)); then
        echo "load: FAIL: socket errors ($socket_errors)" >&2
        failed=1
    fi
fi
if ! grep -q 'requests in' <<<"$summary"; then
    echo "load: FAIL: no request count in wrk's summary" >&2
    failed=1
fi
if ((failed)); then
    exit 1
fi
echo "load: ok"
