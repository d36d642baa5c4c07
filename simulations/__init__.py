"""agentnode.simulations: a seeded, discrete-event world that runs the real protocol cores at scale."""
