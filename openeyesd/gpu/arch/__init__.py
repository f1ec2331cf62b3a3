"""Network modules of the GPU face restorers, written from the published architectures."""
