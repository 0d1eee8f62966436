"""Example Pyro models whose trained guides pyro_fusion knows how to fuse."""
