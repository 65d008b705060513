from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_fixtures import broker  # noqa: F401  (a fixture: imported to register it)
