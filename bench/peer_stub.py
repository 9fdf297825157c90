"""The stub upstream of ``bench/peer.py``: answers every chat completion at once, the same short
answer for every model, so the gateways under test are the only thing that differs.

OpenAI ``POST /v1/chat/completions`` (non-streamed) and Anthropic ``POST /v1/messages`` (Switchyard's
catalog has Anthropic-wire models the router may choose); ``GET /healthz``. aiohttp's low-level
server, no routing table, keep-alive: a few hundred microseconds of CPU per request.

    python bench/peer_stub.py --port 28100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

ANSWER = "The answer is B."
DELAY_S = 0.0  # --delay-ms: a fixed upstream latency (queueing experiments); 0 = answer at once


def _openai(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 64, "completion_tokens": 5, "total_tokens": 69},
        }
    ).encode()


def _anthropic(model: str) -> bytes:
    return json.dumps(
        {
            "id": "msg_stub",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": ANSWER}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 64, "output_tokens": 5},
        }
    ).encode()


async def handle(request: web.BaseRequest) -> web.Response:
    """One answer per request; the model name is echoed back."""
    if request.method == "GET":
        return web.Response(text="ok")
    body = await request.read()
    if DELAY_S:
        await asyncio.sleep(DELAY_S)
    try:
        model = json.loads(body).get("model", "stub")
    except ValueError:
        return web.Response(status=400, text="bad json")
    if request.path.endswith("/chat/completions"):
        return web.Response(body=_openai(model), content_type="application/json")
    if request.path.endswith("/messages"):
        return web.Response(body=_anthropic(model), content_type="application/json")
    return web.Response(status=404, text="not found")


async def serve(host: str, port: int) -> None:
    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    print(f"stub upstream on http://{host}:{port}", flush=True)
    while True:
        await asyncio.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0, help="Answer after this long (default at once).")
    a = ap.parse_args()
    global DELAY_S
    DELAY_S = a.delay_ms / 1000
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
