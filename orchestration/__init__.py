"""The API side of Temporal: starting session workflows, messages to them, ops tools. Kept out
of `workflows/`, whose modules the worker loads into its sandbox."""
