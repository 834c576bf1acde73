"""Beam transforms: read the corpus, embed it, write the results."""
