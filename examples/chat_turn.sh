#!/usr/bin/env bash
# One private chat turn on SmolLM2, as three terminals would run it (server, client, and the dealer
# with DEALER=ttp): a ~30-word message (59 tokens with the template) and NEW answer tokens; the
# client's per-turn record goes to OUT. Compare DEALER=tfp and DEALER=ttp back to back.
#   DEALER=ttp examples/chat_turn.sh        (settable: DEALER NEW PORT OUT MSG APPROX POLICY)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${PORT:-29650}; NEW=${NEW:-16}; DEALER=${DEALER:-ttp}; OUT=${OUT:-results/chat_turn_$DEALER.jsonl}
EXTRA=()  # the same settings for both parties
[ -n "${APPROX:-}" ] && EXTRA+=(--approx "$APPROX")
[ -n "${POLICY:-}" ] && EXTRA+=(--policy "$POLICY")
MSG=${MSG:-"Name a fruit that is red and grows on trees in an orchard in autumn, and say in a few words why it is good to eat."}
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$BIN/mpcache chat server --model smollm2 --dealer "$DEALER" --port "$PORT" --max-new-tokens "$NEW" \
  "${EXTRA[@]}" --timeout 3000 > "${OUT%.jsonl}.server.log" 2>&1 &
pids=$!
if [ "$DEALER" = ttp ]; then
  $BIN/mpcache chat dealer --model smollm2 --port "$PORT" > "${OUT%.jsonl}.dealer.log" 2>&1 &
  pids="$pids $!"
fi
printf '%s\n' "$MSG" /stats /quit |
  $BIN/mpcache chat client --model smollm2 --dealer "$DEALER" --port "$PORT" --max-new-tokens "$NEW" \
    "${EXTRA[@]}" --timeout 3000 --json "$OUT"
wait $pids
