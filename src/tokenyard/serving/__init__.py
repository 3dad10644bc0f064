"""The data plane: the router and model apps that run on Ray Serve."""
