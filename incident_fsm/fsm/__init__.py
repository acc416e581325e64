"""The incident state machine: graph and guards, the data of a step, the engine, the diagrams.

`graph` is the single source of truth for what an incident may do next;
`steps` holds the plain data a step carries; `engine` fires triggers on
persisted incidents through a narrow step writer; `diagrams` draws the
graph. Nothing here talks to a database directly.
"""
