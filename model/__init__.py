"""Rebuilds DistilBERT/BERT encoders in TensorFlow and exports TF Hub-style SavedModels."""
