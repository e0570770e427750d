"""A fake OpenAI-compatible streaming server, standing in for vLLM's in tests (stdlib only).

/health answers 200; /metrics exposes vLLM's KV-cache gauge and preemption counter; /v1/completions streams
`max_tokens` tokens of the test tokenizer (words t<i>) as server-sent events, the first after --prefill-s and
each next one --token-s later, or answers 400 like vLLM when prompt + max_tokens exceed --max-model-len.
--child starts a grandchild that sleeps (to check that the whole process group is stopped); --pid-file
records the pids; --exit-code makes it exit at once; --never-healthy never answers /health 200.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefill-s", type=float, default=0.02)
    parser.add_argument("--token-s", type=float, default=0.005)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--pid-file", default=None)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--never-healthy", action="store_true")
    args, _ = parser.parse_known_args()
    if args.exit_code is not None:
        print("fake server: exiting as asked", flush=True)
        sys.exit(args.exit_code)
    pids = [os.getpid()]
    if args.child:
        pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]).pid)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(" ".join(map(str, pids)))
    state = {"running": 0, "served": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(503 if args.never_healthy else 200, b"")
            elif self.path == "/metrics":
                with lock:
                    usage, served = state["running"] / 10, state["served"]
                text = (f"# HELP vllm:kv_cache_usage_perc KV-cache usage.\n"
                        f'vllm:kv_cache_usage_perc{{engine="0",model_name="llmsim"}} {usage}\n'
                        f'vllm:num_preemptions_total{{engine="0",model_name="llmsim"}} {served // 4}\n')
                self._send(200, text.encode(), "text/plain")
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n, prompt = body["max_tokens"], body["prompt"]
            if len(prompt) + n > args.max_model_len:
                message = (f"This model's maximum context length is {args.max_model_len} tokens. However, you "
                           f"requested {len(prompt) + n} tokens")
                self._send(400, json.dumps({"object": "error", "message": message}).encode())
                return
            with lock:
                state["running"] += 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def event(data: str) -> None:
                payload = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                self.wfile.flush()

            finished = False

            def finish() -> None:
                # counted before the client can see the end of the stream: a /metrics read made after the
                # client's last [DONE] must include this request (a race the parallel test run found)
                nonlocal finished
                if not finished:
                    finished = True
                    with lock:
                        state["running"] -= 1
                        state["served"] += 1

            try:
                time.sleep(args.prefill_s)
                for i in range(n):
                    if i:
                        time.sleep(args.token_s)
                    text = f" t{2 + (i % 7)}"
                    event(json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}))
                event(json.dumps({"choices": [], "usage": {"completion_tokens": n}}))
                finish()
                event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            finally:
                finish()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"fake server on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
