"""What the model reads: datasets (PASCAL-Person-Part, folders, the built-in synthetic parts), preparation
and caches of superpixels and features, and the paper's augmentation."""
