"""Tests of the site power guard."""
