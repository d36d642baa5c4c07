"""agentnode.chaos: real node processes in network namespaces with injected faults."""
