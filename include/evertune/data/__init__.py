"""Data versioning (DVC) and the validated-data layout shared by the DAGs."""
