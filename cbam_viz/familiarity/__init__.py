"""Familiarity: whether an image looks like the training scenes to a model (the detectors), and their fitting and
measurement (`familiarity fit|eval`)."""
