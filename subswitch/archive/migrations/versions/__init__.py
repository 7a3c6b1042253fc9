"""The archive's schema revisions, oldest first."""
