"""Capacity planning (``mint plan``): adapter and weight sizes from a model's config, common models
and GPUs, a simulation of engines over a sampled request stream, and the engine count an SLO needs.
Engine-neutral: numpy and the core's own host LRU, routing and byte counts; no SGLang, no torch."""
