"""Report: result records, expectations and the renderers of the matrix."""
