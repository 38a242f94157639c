"""Analysis of received images: preprocess, infer on a backend, turn model output into per-tooth findings."""
