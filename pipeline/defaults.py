"""Prep settings a user can change, with their defaults: plain constants, importable without
DALI or torch, so that the command line shows them without loading either."""

VAL_FRACTION = 0.1  # share of each class held out when DATA has no train/val folders
SPLIT_SEED = 0
MIN_SIZE = 16  # pixels: images with a shorter side below this are skipped
MAX_PIXELS = 89_478_485  # width x height above this is skipped: PIL's own MAX_IMAGE_PIXELS
PREP_BATCH = 64  # images per batch of the statistics pass
