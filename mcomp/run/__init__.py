"""Running a recipe: preparation, the pipeline, threads and seeds, torchrun."""
