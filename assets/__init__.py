"""The asset manifest and small sample inputs (package data: installed as `tftune.assets.bundled`). Not code."""
