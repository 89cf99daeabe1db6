"""InfluxQL pieces the SDK lacks: the InfluxDB query target, annotation and quoting.

grafana-foundation-sdk has no InfluxDB builder in its 11.x schemas, so the target is a
`cog` Dataquery variant of our own. It serialises to what Grafana's InfluxDB plugin
stores for a raw InfluxQL query (`query`, `rawQuery`, `resultFormat`, `alias`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

PLUGIN_TYPE: Final = "influxdb"
ResultFormat = Literal["time_series", "table"]

TIME_FILTER: Final = "$timeFilter"
"""Grafana's InfluxQL macro: `time >= <from>ms and time <= <to>ms`."""
INTERVAL: Final = "$__interval"
"""Grafana's automatic GROUP BY interval for the panel's width and time range."""


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier (measurement, tag or field key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def idents(names: Iterable[str]) -> str:
    return ", ".join(ident(name) for name in names)


def literal(value: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def var_match(tag: str, variable: str) -> str:
    """`"tag" =~ /^$var$/`: Grafana formats a multi-value or All variable as a regex."""
    return f"{ident(tag)} =~ /^${variable}$/"


class InfluxQLQuery(cogvariants.Dataquery):
    """One raw InfluxQL target of a panel."""

    def __init__(
        self,
        ref_id: str,
        query: str,
        datasource: dashboard.DataSourceRef,
        result_format: ResultFormat,
        alias: str | None,
    ) -> None:
        self.ref_id = ref_id
        self.query = query
        self.datasource = datasource
        self.result_format = result_format
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": self.datasource.to_json(),
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias is not None:
            payload["alias"] = self.alias
        return payload


class InfluxQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder of an `InfluxQLQuery`, in the SDK's fluent style."""

    def __init__(self, datasource: dashboard.DataSourceRef, query: str) -> None:
        self._ref_id = "A"
        self._query = query
        self._datasource = datasource
        self._format: ResultFormat = "time_series"
        self._alias: str | None = None

    def ref_id(self, ref_id: str) -> Self:
        self._ref_id = ref_id
        return self

    def table(self) -> Self:
        self._format = "table"
        return self

    def alias(self, alias: str) -> Self:
        """Series name pattern, e.g. `$tag_device` or `$col`."""
        self._alias = alias
        return self

    def build(self) -> InfluxQLQuery:
        return InfluxQLQuery(self._ref_id, self._query, self._datasource, self._format, self._alias)


class InfluxAnnotationQuery(dashboard.AnnotationQuery):
    """A dashboard annotation fed by an InfluxQL query (Grafana's InfluxDB annotation
    target: `query` plus the columns that become the annotation's text and tags)."""

    def __init__(
        self,
        name: str,
        datasource: dashboard.DataSourceRef,
        icon_color: str,
        query: str,
        text_column: str,
        tags_columns: Iterable[str],
        title_column: str,
    ) -> None:
        super().__init__(name=name, datasource=datasource, enable=True, icon_color=icon_color)
        self.query = query
        self.text_column = text_column
        self.tags_column = ",".join(tags_columns)
        self.title_column = title_column

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload["target"] = {
            "refId": "Anno",
            "query": self.query,
            "rawQuery": True,
            "fromAnnotations": True,
            "textColumn": self.text_column,
            "tagsColumn": self.tags_column,
            "titleColumn": self.title_column,
        }
        return payload


class InfluxAnnotation(cogbuilder.Builder[dashboard.AnnotationQuery]):
    """Builder of an `InfluxAnnotationQuery`."""

    def __init__(self, annotation: InfluxAnnotationQuery) -> None:
        self._annotation = annotation

    def build(self) -> InfluxAnnotationQuery:
        return self._annotation
