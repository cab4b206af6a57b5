"""The networks: CBAM's channel and spatial gates, ResNets with and without them, and the capture of their maps."""
