"""Upstream simulator: a fast, seeded, fault-injecting OpenAI-compatible chat-completions server.

Used by tests, benchmarks and the offline demo; see ``server.create_app`` and ``__main__``.
"""
