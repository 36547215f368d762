"""Spark ETL stages: clean raw logs, build features and ranker samples."""
