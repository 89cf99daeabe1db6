"""Simulators: sites, device behaviour and traffic, with ground truth for scoring."""
