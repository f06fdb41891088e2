"""Tools a speech engine may call: a Python callable and the JSON schema of its input.

Engines that support tool use (Nova Sonic) advertise each tool to the model,
run it when the model asks, off the audio path, and send the result back.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ToolFunction = Callable[[dict[str, Any]], Awaitable[object] | object]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    function: ToolFunction

    async def run(self, arguments: str) -> str:
        """The JSON result for the model; a failure is reported to it, not raised."""
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(parsed, dict):
                raise ValueError("tool input must be a JSON object")
            result = self.function(parsed)
            if inspect.isawaitable(result):
                result = await result
            return json.dumps(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the model is told, and can say so to the user
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})


def current_time(arguments: dict[str, Any]) -> dict[str, str]:
    zone_name = str(arguments.get("timezone") or "UTC")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone '{zone_name}'") from exc
    now = datetime.now(zone)
    return {"timezone": zone_name, "time": now.strftime("%H:%M"), "date": now.date().isoformat()}


CURRENT_TIME = Tool(
    name="getCurrentTime",
    description="The current date and time in a time zone.",
    input_schema={
        "type": "object",
        "properties": {
            "timezone": {"type": "string", "description": "IANA name, e.g. Europe/Paris"}
        },
        "required": [],
    },
    function=current_time,
)

DEFAULT_TOOLS: tuple[Tool, ...] = (CURRENT_TIME,)
