"""swarmctl: the command-line client of the swarm job service (submit, watch, inspect).

It speaks only the public HTTP API (REST and the SSE event stream), so it works against any
deployment; nothing here imports the service's internals except the event type names.
"""
