"""The `rollout` command line: the top layer, may import everything below."""
