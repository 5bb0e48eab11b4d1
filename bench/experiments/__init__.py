"""Finished experiments whose results shaped the gateway (see README.md here); rerun by hand."""
