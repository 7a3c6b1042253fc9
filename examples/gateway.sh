#!/usr/bin/env bash
# Enqueue an urgent theft block through the HTTP gateway, then follow its status
# until it has its outcome. Needs curl; jq is not needed.
#
#   SUBSWITCH_API_KEY=sskey_... examples/gateway.sh [SUBSCRIPTION_ID]
#
# GATEWAY_URL defaults to http://127.0.0.1:8000 (`subswitch gateway`). Exit status:
# 0 applied or superseded, 1 another outcome, 2 refused, 4 no outcome within 30 s.
set -euo pipefail

gateway="${GATEWAY_URL:-http://127.0.0.1:8000}"
subscription="${1:-214748364}"
: "${SUBSWITCH_API_KEY:?set SUBSWITCH_API_KEY to an API key of the policy}"
command_id="fraud-case-$subscription-block-1"

body=$(printf '{"type": "ChangeBlockStatus", "command_id": "%s", "org_id": "telco",
  "subscription_id": %s, "block_id": 1, "active": true, "reason": "stolen",
  "priority": "urgent", "correlation_id": "case-%s"}' "$command_id" "$subscription" "$subscription")

echo "POST $gateway/v1/commands"
answer=$(curl -sS -i -X POST "$gateway/v1/commands" \
  -H "Authorization: Bearer $SUBSWITCH_API_KEY" \
  -H "Content-Type: application/json" \
  --data-binary "$body")
status_line=$(printf '%s\n' "$answer" | head -n 1 | tr -d '\r')
echo "$status_line"
printf '%s\n' "$answer" | grep -i '^location:' | tr -d '\r' || true
printf '%s\n' "$answer" | tail -n 1
echo
case "$status_line" in
  *" 202"*) ;;
  *) exit 2 ;;
esac

for _ in $(seq 1 60); do
  status=$(curl -sS "$gateway/v1/commands/$command_id" \
    -H "Authorization: Bearer $SUBSWITCH_API_KEY")
  state=$(printf '%s' "$status" | sed -n 's/.*"state":"\([a-z_]*\)".*/\1/p')
  case "$state" in
    applied | superseded)
      echo "GET /v1/commands/$command_id: $state"
      exit 0 ;;
    failed | rejected | expired)
      echo "GET /v1/commands/$command_id: $state"
      printf '%s\n' "$status"
      exit 1 ;;
  esac
  sleep 0.5
done
echo "GET /v1/commands/$command_id: still ${state:-unknown} after 30 s"
exit 4
