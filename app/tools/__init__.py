"""Tools an agent may call: MCP servers over streamable HTTP, and tools served by the
caller over signed HTTP POSTs; the toolbox that offers them to the model and runs calls."""
