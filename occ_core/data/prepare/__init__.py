"""``occ prepare``: the pipeline (raw folders to the prepared layout), the layout and its reader, target downsampling."""
