"""The routes that are not a chat: health, the model list, the feedback sink, and the
``/emulator/*`` side channels (ground truth) and controls (faults, drift, latency, reset, stats)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .asgi import HTTPError, Receive, Send, dumps, query, read_json, send_body, send_json
from .core import Emulator
from .faults import DriftRule, FaultSpec

log = logging.getLogger(__name__)

Route = Callable[[dict, Receive, Send], Awaitable[None]]
M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], req: dict, what: str) -> M:
    """``req`` as ``model``; a 400 naming the errors otherwise."""
    try:
        return model.model_validate(req)
    except ValidationError as exc:
        raise HTTPError(
            400, f"invalid {what}: {exc.errors(include_url=False)}", "invalid_request_error"
        ) from exc


def _nested(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """{(provider, model): n} → {provider: {model: n}} (JSON has no tuple keys)."""
    out: dict[str, dict[str, int]] = {}
    for (provider, model), n in sorted(counts.items()):
        out.setdefault(provider, {})[model] = n
    return out


class AdminRoutes:
    """Handlers over one :class:`Emulator`'s state; :meth:`routes` maps (method, path) to them."""

    def __init__(self, emulator: Emulator) -> None:
        self.emu = emulator
        self._models_body = dumps({"object": "list", "data": [m.card() for m in emulator.models.values()]})

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("GET", "/v1/models"): self.list_models,
            ("POST", "/v1/feedback"): self.feedback_post,
            ("GET", "/healthz"): self.health,
            ("GET", "/readyz"): self.health,
            ("GET", "/emulator/truth"): self.truth_get,
            ("POST", "/emulator/truth"): self.truth_post,
            ("GET", "/emulator/faults"): self.faults_get,
            ("POST", "/emulator/faults"): self.faults_post,
            ("DELETE", "/emulator/faults"): self.faults_delete,
            ("GET", "/emulator/drift"): self.drift_get,
            ("POST", "/emulator/drift"): self.drift_post,
            ("DELETE", "/emulator/drift"): self.drift_delete,
            ("POST", "/emulator/latency"): self.latency_post,
            ("POST", "/emulator/reset"): self.reset,
            ("GET", "/emulator/stats"): self.stats,
            ("GET", "/emulator/feedback"): self.feedback_get,
        }

    async def list_models(self, scope: dict, receive: Receive, send: Send) -> None:
        provider = scope.get("emulator.provider")
        if provider is None:
            await send_body(send, 200, self._models_body)
            return
        sold = [info.card() for (seller, _), info in self.emu.offers.items() if seller == provider]
        await send_json(send, 200, {"object": "list", "data": sold})

    async def model_card(self, model_id: str, send: Send) -> None:
        """``GET /v1/models/{id}``."""
        await send_json(send, 200, self.emu.model(model_id).card())

    async def health(self, scope: dict, receive: Receive, send: Send) -> None:
        emu = self.emu
        await send_json(send, 200, {"status": "ok", "prompts": len(emu.corpus), "models": len(emu.models)})

    async def truth_get(self, scope: dict, receive: Receive, send: Send) -> None:
        q = query(scope)
        h = q.get("prompt_hash")
        if not h:
            raise HTTPError(400, "query parameter 'prompt_hash' is required", "invalid_request_error")
        record = self.emu.corpus.by_hash.get(h)
        if record is None:
            raise HTTPError(404, f"unknown prompt_hash {h}", "invalid_request_error", "unknown_prompt")
        await send_json(send, 200, self.emu.truth(record, q.get("model")))

    async def truth_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await read_json(receive)
        corpus = self.emu.corpus
        if isinstance(req.get("prompt"), str):
            record = corpus.lookup(req["prompt"])
        elif isinstance(req.get("prompt_hash"), str):
            record = corpus.by_hash.get(req["prompt_hash"])
        else:
            raise HTTPError(400, "body needs 'prompt' or 'prompt_hash'", "invalid_request_error")
        if record is None:
            raise HTTPError(404, "unknown prompt", "invalid_request_error", "unknown_prompt")
        model = req.get("model")
        await send_json(send, 200, self.emu.truth(record, model if isinstance(model, str) else None))

    async def faults_get(self, scope: dict, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"faults": self.emu.faults.snapshot()})

    async def faults_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await read_json(receive)
        model = req.pop("model", None)
        provider = req.pop("provider", None)
        if not isinstance(model, str) or (model != "*" and model not in self.emu.models):
            raise HTTPError(
                400, f"'model' must be a served model id or '*', got {model!r}", "invalid_request_error"
            )
        if provider is not None and provider not in self.emu.providers:
            raise HTTPError(
                400,
                f"'provider' must be a catalog provider ({sorted(self.emu.providers)}), got {provider!r}",
                "invalid_request_error",
            )
        spec = _validated(FaultSpec, req, "fault spec")
        self.emu.faults.set(model, spec, provider)
        where = provider or "every provider"
        log.info("faults set for %s at %s: %s", model, where, spec.model_dump(exclude_defaults=True))
        await send_json(send, 200, {"faults": self.emu.faults.snapshot()})

    async def faults_delete(self, scope: dict, receive: Receive, send: Send) -> None:
        q = query(scope)
        self.emu.faults.clear(q.get("model"), q.get("provider"))
        await send_json(send, 200, {"faults": self.emu.faults.snapshot()})

    async def drift_get(self, scope: dict, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self._drift_rules())

    async def drift_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await read_json(receive)
        rule = _validated(DriftRule, req, "drift rule")
        if rule.model not in self.emu.models:
            raise HTTPError(400, f"unknown model {rule.model!r}", "invalid_request_error")
        resolved = self.emu.drift.add(rule)
        log.info("drift added: %s", resolved.model_dump())
        await send_json(send, 200, self._drift_rules())

    def _drift_rules(self) -> dict:
        return {"drift": [r.model_dump() for r in self.emu.drift.rules], "now": time.time()}

    async def drift_delete(self, scope: dict, receive: Receive, send: Send) -> None:
        self.emu.drift.clear()
        await send_json(send, 200, {"drift": []})

    async def latency_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await read_json(receive)
        speed = req.get("speed")
        if not isinstance(speed, int | float) or isinstance(speed, bool) or speed < 0:
            raise HTTPError(400, "'speed' must be a number >= 0", "invalid_request_error")
        self.emu.latency.speed = float(speed)
        await send_json(send, 200, {"speed": self.emu.latency.speed})

    async def reset(self, scope: dict, receive: Receive, send: Send) -> None:
        await read_json(receive, allow_empty=True)
        self.emu.reset()
        await send_json(send, 200, {"status": "reset"})

    async def stats(self, scope: dict, receive: Receive, send: Send) -> None:
        emu = self.emu
        await send_json(
            send,
            200,
            {
                "requests": dict(emu.requests),
                "requests_by_provider": _nested(emu.provider_requests),
                "total_requests": sum(emu.requests.values()),
                "faults": dict(emu.fault_counts),
                "feedback": len(emu.feedback),
                "speed": emu.latency.speed,
                "uptime_s": round(time.time() - emu.started, 3),
            },
        )

    async def feedback_post(self, scope: dict, receive: Receive, send: Send) -> None:
        req = await read_json(receive)
        rid, score, label = req.get("request_id"), req.get("score"), req.get("label")
        if not isinstance(rid, str) or not rid:
            raise HTTPError(422, "'request_id' is required", "invalid_request_error", None, "request_id")
        if score is None and label is None:
            raise HTTPError(
                422, "feedback needs 'score' (0..1) or 'label'", "invalid_request_error", None, "score"
            )
        if score is not None and (not isinstance(score, int | float) or not 0 <= score <= 1):
            raise HTTPError(422, "'score' must be a number in [0, 1]", "invalid_request_error", None, "score")
        if len(self.emu.feedback) < 1_000_000:
            self.emu.feedback.append(req)
        await send_json(send, 202, {"status": "accepted", "request_id": rid})

    async def feedback_get(self, scope: dict, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"feedback": self.emu.feedback})
