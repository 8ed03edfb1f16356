"""ISO 3166-1 alpha-2 country codes, for validating catalogue data and geo lookups.

``ISO_ALPHA2`` holds the 249 officially assigned codes (ISO 3166-1, as of ISO/TC 46
N1108, 2023-04-05; cross-checked against the public-domain tzdata ``iso3166.tab``).
``USER_ASSIGNED`` holds user-assigned codes that are not ISO but that geolocation
databases emit: ``XK`` (Kosovo). ``VALID_COUNTRY_CODES`` is the union; use
:func:`is_country_code` to test a value.
"""

from __future__ import annotations

ISO_ALPHA2: frozenset[str] = frozenset(
    """
        AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
        BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
        BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN
        CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
        EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF
        GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
        HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM
        JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
        LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
        ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
        NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG
        PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
        SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS
        ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
        TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
        VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905 - a compact table reads better than 249 quoted strings
)

#: Not ISO 3166-1, but emitted by MaxMind, DB-IP, IPinfo and others for Kosovo.
USER_ASSIGNED: frozenset[str] = frozenset({"XK"})

VALID_COUNTRY_CODES: frozenset[str] = ISO_ALPHA2 | USER_ASSIGNED


def is_country_code(code: object) -> bool:
    """True for an upper-case ISO 3166-1 alpha-2 code (or an accepted user-assigned one)."""
    return isinstance(code, str) and code in VALID_COUNTRY_CODES
