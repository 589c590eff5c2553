"""One run: what it prepares (``plan``), the run itself (``experiment``), its MLflow
tracking, and the saved student."""
