"""Representation geometry (notebook 09): capture, covariances and CKA, projections, cached layer profiles,
figures, and the study that compares the grid's runs (Figures 1, 2, 3 and C4)."""
