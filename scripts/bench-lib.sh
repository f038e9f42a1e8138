# Shared by the serving benchmarks (sourced): wait_ready PID waits until the server on $port
# answers /health with 200, or fails when the process exits first or after 10 minutes.
wait_ready() {  # PID
  for _ in $(seq 1 1200); do
    kill -0 "$1" 2>/dev/null || { echo "server exited before it was ready" >&2; return 1; }
    .venv/bin/python -c "import http.client; c = http.client.HTTPConnection('127.0.0.1', $port, timeout=1); c.request('GET', '/health'); assert c.getresponse().status == 200" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "server on $port did not become ready" >&2; return 1
}
