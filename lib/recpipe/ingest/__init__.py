"""Readers of real data sets into the raw behaviour-log format."""
