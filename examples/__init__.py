"""Reference models and data loaders that edgeship builds, validates and ships."""
