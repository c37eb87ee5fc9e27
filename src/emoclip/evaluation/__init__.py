"""Evaluate: metrics, the scoring protocol, run reports and aggregation."""
