"""The core: a loaded `Model`, its canonical sites, the one runner of every forward, hooks, capture, interventions,
the prefix KV cache, generation, the backends, and the value types every layer above shares (`Activations`,
`Direction`/`Subspace`, `Result`)."""
