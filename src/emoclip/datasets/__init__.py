"""Datasets: benchmark layouts, label tables, votes and fixed splits."""
