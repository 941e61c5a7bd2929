"""Profiles (``configs/*.yaml``): loading with ``extends`` and checking every key against the schema."""
