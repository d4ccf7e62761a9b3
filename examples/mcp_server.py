"""A small MCP server for the tool-using research swarm (examples/tool_research.json).

Serves two tools over streamable HTTP at http://127.0.0.1:PORT/mcp: `search` (a canned
look-up over a few notes, so runs are repeatable offline) and `word_count`. Each call is
appended to --calls-log when given, one JSON line per call (tests use it to count calls).

    python examples/mcp_server.py --port 8765
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer

NOTES = {
    "heat pump": "Cold-climate heat pumps keep a COP above 2 down to -15 °C.",
    "insulation": "Insulating a loft cuts a house's heat loss by about a quarter.",
    "grid": "Peak winter demand rises when many homes heat electrically at once.",
}


def build(calls_log: Path | None, delay_s: float) -> MCPServer:
    server = MCPServer("example-research-tools")

    def record(tool: str, arguments: dict[str, object]) -> None:
        if calls_log is not None:
            with calls_log.open("a") as f:
                f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")

    @server.tool(description="Search the research notes; returns the notes that match.")
    def search(query: str) -> str:
        record("search", {"query": query})
        if delay_s:
            time.sleep(delay_s)
        words = query.lower()
        found = [text for key, text in NOTES.items() if any(w in words for w in key.split())]
        return "\n".join(found) or f"no notes match {query!r}; known topics: {', '.join(NOTES)}"

    @server.tool(description="Count the words of a text.")
    def word_count(text: str) -> int:
        record("word_count", {"text": text})
        return len(text.split())

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--calls-log", type=Path, default=None)
    parser.add_argument("--delay-s", type=float, default=0.0, help="latency of each search")
    args = parser.parse_args()
    build(args.calls_log, args.delay_s).run(
        "streamable-http", host=args.host, port=args.port, stateless_http=True, json_response=True
    )


if __name__ == "__main__":
    main()
