"""Output tables: schemas (every column documented) and atomic Parquet I/O."""
