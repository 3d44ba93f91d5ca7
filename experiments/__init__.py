"""Experiment drivers and analyses (not part of the library): the proxy runs of docs/experiments/."""
