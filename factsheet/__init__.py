"""The factsheet: tables generated from committed measurements, the LaTeX source and its PDF."""
