#!/bin/sh
# A client that is not Python: uploads a file to the example application, follows its job in
# Skiplock's HTTP API until it ends, prints the job's timeline (every transition carries the
# upload request's X-Request-ID as its correlation id), then reads the result from the app.
# Needs POSIX sh, curl, awk.
#
#   client.sh FILE          upload FILE, wait for its job, print the timeline and the result
#   client.sh --fail FILE   an upload whose transaction fails after the enqueue: nothing is stored
#
# SKIPLOCK_API  Skiplock's API (http://127.0.0.1:8000)     SKIPLOCK_TOKEN  its bearer token, if set
# UPLOADS_APP   the example application (http://127.0.0.1:8001)
# REQUEST_ID    the X-Request-ID to send (default: a random one)
set -eu

API=${SKIPLOCK_API:-http://127.0.0.1:8000}
APP=${UPLOADS_APP:-http://127.0.0.1:8001}
FAIL=
if [ "${1:-}" = "--fail" ]; then FAIL='&fail_after_enqueue=1'; shift; fi
FILE=${1:?usage: client.sh [--fail] FILE}
RID=${REQUEST_ID:-upload-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}
NAME=$(basename "$FILE" | sed 's/ /%20/g')

api() {  # Skiplock's API, with the token when one is set
    if [ -n "${SKIPLOCK_TOKEN:-}" ]; then curl -sS -H "Authorization: Bearer $SKIPLOCK_TOKEN" "$@"
    else curl -sS "$@"; fi
}
text() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d '"' -f 4; }  # first "NAME":"value" of the JSON on stdin
number() { grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d : -f 2; }    # first "NAME":123

echo "POST $APP/uploads?name=$NAME$FAIL  (X-Request-ID: $RID)"
ANSWER=$(curl -sS -w '\n%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
              -H "X-Request-ID: $RID" --data-binary "@$FILE" "$APP/uploads?name=$NAME$FAIL")
CODE=$(printf '%s\n' "$ANSWER" | tail -n 1)
BODY=$(printf '%s\n' "$ANSWER" | sed '$d')
echo "  $CODE $BODY"
UPLOAD=$(printf '%s' "$BODY" | number upload_id)
JOB=$(printf '%s' "$BODY" | text job_id)
[ -n "$JOB" ] || { echo "no job in the answer" >&2; exit 1; }

if [ -n "$FAIL" ]; then
    echo "rolled back: GET $API/jobs/$JOB -> $(api -o /dev/null -w '%{http_code}' "$API/jobs/$JOB")," \
         "GET $APP/uploads/$UPLOAD -> $(curl -sS -o /dev/null -w '%{http_code}' "$APP/uploads/$UPLOAD")"
    exit 0
fi
[ "$CODE" = 201 ] || exit 1

LAST=
TRIES=0
while :; do
    DETAIL=$(api -f "$API/jobs/$JOB")
    STATE=$(printf '%s' "$DETAIL" | text state)
    [ "$STATE" = "$LAST" ] || echo "job $JOB: $STATE"
    LAST=$STATE
    case $STATE in succeeded|failed|cancelled) break ;; esac
    TRIES=$((TRIES + 1))
    [ "$TRIES" -lt 600 ] || { echo "job $JOB still $STATE after 60 s" >&2; exit 1; }
    sleep 0.1
done

echo "timeline (GET $API/jobs/$JOB, .history):"
printf '%s\n' "$DETAIL" | awk '
    function value(entry, key,    v) {  # the JSON value of "key" in one history entry (string or null)
        if (!match(entry, "\"" key "\":(\"[^\"]*\"|null|[0-9]+)")) return "-"
        v = substr(entry, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
        gsub(/"/, "", v)
        return v == "null" ? "-" : v
    }
    {
        n = split(substr($0, index($0, "\"history\":[")), entries, /\{"state":"/)
        for (i = 2; i <= n; i++) {
            e = entries[i]
            printf "  %-10s %s  attempt %s  worker %s  correlation_id=%s\n", substr(e, 1, index(e, "\"") - 1),
                   value(e, "at"), value(e, "attempt"), value(e, "worker_id"), value(e, "correlation_id")
        }
    }'

RESULT=$(curl -sS "$APP/uploads/$UPLOAD")
COUNT=$(printf '%s' "$RESULT" | grep -o '"sha256":"' | wc -l | tr -d ' ')
echo "upload $UPLOAD: $(printf '%s' "$RESULT" | text state), $COUNT result row(s):" \
     "$(printf '%s' "$RESULT" | number words) words, $(printf '%s' "$RESULT" | number lines) lines," \
     "sha256 $(printf '%s' "$RESULT" | text sha256)  (GET $APP/uploads/$UPLOAD)"
[ "$STATE" = succeeded ]
