"""recostream's pure core: event model, state objects and algorithms.

Only the standard library, numpy and scipy are imported here; no clock, no
environment, no Kafka. Time is always an argument (event time).
"""
