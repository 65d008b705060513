"""The samples payload written by hand: the one message kind sent at sensor rates.

`json.dumps` on the samples dict cost about three times the rest of the
samples path per message (benchmarks/telemetry.py). Device ids, metric names
and qualities repeat, so their JSON text is cached; numbers are written as
`json` writes them. The output parses to exactly what `json.dumps` would give
(tests/mqtt/test_samplejson.py checks that with hypothesis).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from cellctl.model import MetricValue, Quality, Sample

_CACHE_MAX = 4096
_QUALITY = {q: json.dumps(q.value) for q in Quality}


class SampleJson:
    def __init__(self, version: int) -> None:
        self._version = version
        self._strings: dict[str, str] = {}

    def text(self, value: str) -> str:
        found = self._strings.get(value)
        if found is None:
            found = json.dumps(value, ensure_ascii=False)
            if len(self._strings) < _CACHE_MAX:
                self._strings[value] = found
        return found

    def value(self, v: MetricValue) -> str:
        kind = type(v)
        if kind is float:
            # json writes NaN/Infinity as those tokens; float repr would write nan/inf.
            return repr(v) if math.isfinite(v) else json.dumps(v)  # type: ignore[arg-type]
        if kind is bool:
            return "true" if v else "false"
        if kind is int:
            return str(v)
        return json.dumps(v, ensure_ascii=False)  # strings, and subclasses: json decides

    def item(self, s: Sample) -> str:
        return (
            f'{{"name":{self.text(s.name)},"value":{self.value(s.value)},'
            f'"ts":{s.timestamp!r},"quality":{_QUALITY[s.quality]}}}'
        )

    def encode(self, device_id: str, samples: Sequence[Sample], now: float) -> bytes:
        if len(samples) == 1:
            items = self.item(samples[0])  # the usual case: one sample per message
        else:
            items = ",".join([self.item(s) for s in samples])
        head = f'{{"v":{self._version},"ts":{now!r},"device":{self.text(device_id)},"samples":['
        return (head + items + "]}").encode()
