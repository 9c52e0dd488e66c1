"""Tests for egress.lab."""
