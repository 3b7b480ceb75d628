"""Dataset formats: one module per format with its constants and readers (and its dataset spec)."""
