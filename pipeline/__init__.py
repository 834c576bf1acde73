"""Assembles the embedding pipeline from options: read -> embed -> write."""
