"""The device registry: sites, grid cells, workers, device profiles and devices."""
