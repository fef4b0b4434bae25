"""The learning core: features, training, the model registry, prediction and confidence."""
