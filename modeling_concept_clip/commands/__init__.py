"""Console scripts of the library."""
