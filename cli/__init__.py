"""agentnode.cli: the thin command layer (parse, build config, call the library, exit code)."""
