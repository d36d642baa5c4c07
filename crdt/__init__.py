"""agentnode.crdt: vector clocks and delta-state CRDTs. Standard library only; no I/O, no clocks."""
