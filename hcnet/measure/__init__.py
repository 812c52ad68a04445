"""Measurements of the network and its programs: counts, roofline, timings, ahead-of-time
compiles."""
