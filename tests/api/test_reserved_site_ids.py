"""Site ids cannot take a name the desk's or the residents' own pages use in the place a
site id goes in a URL: such a site's pages would be shadowed (or shadow the page)."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from api.routes import desk, field, resident, stream, wall, worker
from registry.schema import SiteSpec
from sites.model import RESERVED_SITE_IDS

SITE_PREFIXES = ("/desk/", "/resident/")
"""Where `{site}` is the first segment of some page."""


def _literal_first_segments() -> set[str]:
    found: set[str] = set()
    for router in (desk.router, field.router, resident.router, stream.router, wall.router,
                   worker.router):  # fmt: skip
        for route in router.routes:
            assert isinstance(route, APIRoute)
            for prefix in SITE_PREFIXES:
                if route.path.startswith(prefix):
                    first = route.path[len(prefix) :].split("/")[0]
                    if first and not first.startswith("{"):
                        found.add(first)
    return found


def test_every_page_name_where_a_site_id_goes_is_reserved() -> None:
    sited = {
        prefix
        for r in (desk.router, resident.router, stream.router, wall.router)
        for route in r.routes
        if isinstance(route, APIRoute)
        for prefix in SITE_PREFIXES
        if route.path.startswith(prefix + "{site}")
    }
    assert sited == set(SITE_PREFIXES)  # both places do take a site id
    assert _literal_first_segments() <= RESERVED_SITE_IDS


@pytest.mark.parametrize("name", sorted(RESERVED_SITE_IDS))
def test_the_registry_refuses_a_reserved_site_id(name: str) -> None:
    with pytest.raises(ValueError, match="reserved for the desk's own pages"):
        SiteSpec.model_validate({"id": name, "name": "X", "timezone": "Asia/Shanghai"})
