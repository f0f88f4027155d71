"""The export formats by name: one `Exporter` each (see `tftune.export.base.Exporter`)."""

from __future__ import annotations

from tftune.export.adapters import AdaptersExporter
from tftune.export.base import Exporter
from tftune.export.keras import KerasExporter
from tftune.export.litert import LiteRTExporter
from tftune.export.savedmodel import SavedModelExporter

EXPORTERS: dict[str, Exporter] = {e.name: e for e in (KerasExporter(), SavedModelExporter(), LiteRTExporter(),
                                                      AdaptersExporter())}
FORMATS = tuple(EXPORTERS)
