#!/usr/bin/env bash
# The demo: sets up (Debian packages), builds, starts a real framepipe server on loopback,
# streams a few hundred synthetic 1280x720 frames through the real client, then a short H.264
# clip as compressed packets (the server decodes), prints the summaries and the first results,
# then stops the server with SIGTERM (graceful drain, exit 0).
#   scripts/demo.sh [frames=300] [streams=1]
set -euo pipefail
cd "$(dirname "$0")/.."
frames=${1:-300}
streams=${2:-1}
scripts/setup.sh
scripts/build.sh default --target framepipe
bin=build/default/bin/framepipe
log=$(mktemp)
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT

echo "== starting: framepipe serve --listen 127.0.0.1:0"
"$bin" serve --listen 127.0.0.1:0 --metrics 127.0.0.1:0 2>"$log" &
server=$!
port=""
for _ in $(seq 1 200); do
  port=$(sed -n 's/.*event=server_started .* port=\([0-9]*\).*/\1/p' "$log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "server failed to start"; exit 1; }
  sleep 0.05
done
[ -n "$port" ] || { cat "$log"; echo "server did not report its port"; exit 1; }
sed -n '/event=backend_fallback\|event=server_started\|event=metrics_listening/p' "$log"

echo
echo "== streaming: framepipe stream --target 127.0.0.1:$port --frames $frames --streams $streams --size 1280x720 --show 12"
"$bin" stream --target "127.0.0.1:$port" --frames "$frames" --streams "$streams" --size 1280x720 \
  --show 12 --no-progress
rc=$?

# Compressed video: a 5-second H.264 clip with B-frames (made here by ffmpeg's libx264), sent as
# its packets - no decode or re-encode on the client; the server decodes and answers each one.
clip=$(mktemp --suffix=.mp4)
ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -t 5 -c:v libx264 -bf 3 -g 30 \
  -pix_fmt yuv420p "$clip"
echo
echo "== streaming H.264 packets: framepipe stream --target 127.0.0.1:$port --input clip.mp4 --send packets --no-pace --show 6"
"$bin" stream --target "127.0.0.1:$port" --input "$clip" --send packets --no-pace --show 6 \
  --no-progress || rc=1
rm -f "$clip"

echo
echo "== stopping the server (SIGTERM: drain, then exit)"
kill -TERM "$server"
wait "$server"
src=$?
sed -n '/event=stream_\|event=signal\|event=server_stopped/p' "$log"
echo "server exit code: $src"
trap - EXIT
rm -f "$log"
exit $(( rc != 0 || src != 0 ))
