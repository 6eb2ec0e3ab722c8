#!/usr/bin/env bash
# Scripted private chat, as three terminals would run it: dealer, server and client of
# `mpcache chat` (SmolLM2, TTP dealer), three turns of 34 prompt tokens + NEW answer tokens each,
# fed to the client's stdin. Prints the client's session and a per-turn cost table.
#   examples/chat_demo.sh            (or make chat-demo; settable: MODEL NEW PORT OUT TIMEOUT)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${PORT:-29600}
NEW=${NEW:-4}
MODEL=${MODEL:-smollm2}
TIMEOUT=${TIMEOUT:-1800}  # one local step of SmolLM2 can take minutes on a loaded 2-core machine
OUT=${OUT:-results/chat_smollm2.jsonl}
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$BIN/mpcache chat server --model "$MODEL" --port "$PORT" --max-new-tokens "$NEW" --timeout "$TIMEOUT" > "${OUT%.jsonl}.server.log" 2>&1 &
server=$!
$BIN/mpcache chat dealer --model "$MODEL" --port "$PORT" > "${OUT%.jsonl}.dealer.log" 2>&1 &
dealer=$!
printf '%s\n' \
  "Name a fruit." \
  "Name a fruit that is red and grows on trees in an orchard in autumn, and say why it is good." \
  "Now name one animal that lives on a farm and gives us milk every day, and tell me what it eats." \
  /stats /quit |
  $BIN/mpcache chat client --model "$MODEL" --port "$PORT" --max-new-tokens "$NEW" --timeout "$TIMEOUT" \
    --json "$OUT"
wait "$server" "$dealer"
$BIN/python -m mpcache.programs.parties.chat_report "$OUT"
