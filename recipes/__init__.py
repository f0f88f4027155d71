"""Bundled recipe files (package data: installed as `tftune.recipes`). Not code."""
