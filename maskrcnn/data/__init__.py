"""Datasets, image loading and augmentation."""
