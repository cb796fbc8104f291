"""Measurements that print figures (not tests): pass rates of a model on a task, throughput."""
