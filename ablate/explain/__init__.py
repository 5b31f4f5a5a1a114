"""`ablate explain`: what the frozen teacher rebuilds from a trained encoder's features
(ablate.explain.run), drawn as grids (grid) from test frames or images (frames)."""
