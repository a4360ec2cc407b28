"""An offline, scripted multi-step agent run recorded through the real capture path.

Used by ``tracevault demo`` when no framework integration provides a richer demo: it
needs no keys and no network, and exercises every event kind the ledger stores.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tracevault.api import AuditLogger
from tracevault.pricing import cost_of

MODEL = "gpt-4o-mini"


class ToolTimeout(TimeoutError):
    """The scripted time service is slow on the first try."""


def _get_weather(city: str) -> dict[str, object]:
    return {"city": city, "forecast": "sunny", "temperature_c": 21}


_time_calls = 0


def _get_local_time(city: str) -> str:
    global _time_calls
    _time_calls += 1
    if _time_calls == 1:
        raise ToolTimeout(f"time service did not answer for {city!r} within 2s")
    return "14:05"


def run_demo(session_id: str | None = None, user_id: str = "demo-user") -> str:
    """Record one scripted agent run and return its session id (caller flushes)."""
    global _time_calls
    _time_calls = 0
    session_id = session_id or "demo-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    log = AuditLogger(session_id=session_id, user_id=user_id)
    question = "What's the weather in Paris, and what time is it there?"
    with log.span("weather-agent", kind="agent", inputs={"question": question}):
        log.log_input(question, source="cli-demo")
        log.log_reasoning(
            "The user wants two facts; I need the weather tool and the clock tool.",
            plan=["get_weather(Paris)", "get_local_time(Paris)", "answer"],
            confidence=0.9,
        )
        usage = {"input": 182, "output": 41, "total": 223}
        log.log_llm_call(
            MODEL,
            provider="openai",
            messages=[{"role": "user", "content": question}],
            tool_calls=[
                {"name": "get_weather", "args": {"city": "Paris"}},
                {"name": "get_local_time", "args": {"city": "Paris"}},
            ],
            finish_reason="tool_calls",
            usage=usage,
            duration_ms=412.0,
            cost=cost_of(MODEL, usage["input"], usage["output"]),
        )
        tool = log.tool_call("get_weather")(_get_weather)
        tool(city="Paris")
        clock = log.tool_call("get_local_time")(_get_local_time)
        try:
            clock(city="Paris")
        except ToolTimeout as exc:
            log.log_error(exc, where="get_local_time", recovery_action="retried the tool once")
            clock(city="Paris")
        usage2 = {"input": 260, "output": 24, "total": 284}
        answer = "It is sunny and 21 °C in Paris, and the local time is 14:05."
        log.log_llm_call(
            MODEL,
            provider="openai",
            response=answer,
            finish_reason="stop",
            usage=usage2,
            duration_ms=298.0,
            cost=cost_of(MODEL, usage2["input"], usage2["output"]),
        )
        total_cost = (cost_of(MODEL, 182, 41) or 0) + (cost_of(MODEL, 260, 24) or 0)
        log.log_output(
            answer, tokens_used=usage["total"] + usage2["total"], model=MODEL, cost=total_cost
        )
    return session_id
