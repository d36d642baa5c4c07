"""agentnode.consensus: the Raft group for critical state (roster, name leases, locks, linearizable keys)."""
