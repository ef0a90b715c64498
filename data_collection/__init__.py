"""Stage 1: collect environment-verified (request, state, action) triples with Ray actors."""
