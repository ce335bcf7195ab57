"""The one naming function every table and column name goes through.

Segment's rules (snake_case at case changes, runs of other characters to one `_`)
plus Sluice's: Latin letters with diacritics are folded to their ASCII letters
(`größe` -> `grosse`, `prénom` -> `prenom`) rather than dropped, reserved words of any of
the five warehouses get a leading `_` so the same SQL runs everywhere, and names over
PostgreSQL's 63-byte limit are cut with a stable hash tag so two long names never
collide after cutting.

The fold is the standard library's NFKD decomposition (frozen by Unicode's stability
policy, so a column's name never changes with a library or Python upgrade) without its
combining marks, plus the Latin letters that do not decompose (ß, æ, ø, œ, þ, ð, ł...).
Other scripts have no Latin form here: their letters are left out, and a name left with
nothing keeps its stable hash name (`col_<sha1 of the raw name>`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

MAX_IDENTIFIER_BYTES = 63
_HASH_LEN = 8

# Union of reserved words that cannot be used unquoted as a column name in
# PostgreSQL, Redshift, BigQuery, Snowflake or DuckDB (and their common SQL-standard core).
RESERVED_WORDS: frozenset[str] = frozenset(
    """
    all allowoverwrite analyse analyze and any array as asc assert_rows_modified at
    authorization backup between binary blanksinnull both by bytedict bzip2 case cast
    check collate collation column connect connection constraint create credentials
    cross current current_catalog current_date current_role current_schema current_time
    current_timestamp current_user current_user_id default deferrable deflate defrag
    define delimiters delta delta32k desc disable distinct do else empty emptyasnull
    enable encode encrypt encryption end enum escape except exclude explicit exists
    extract false fetch following for foreign freeze from full gcm globaldict256
    globaldict64k grant group grouping groups gzip hash having identity ignore ilike
    in initially inner interval intersect into is isnull join lateral leading left
    like limit localtime localtimestamp lookup luns lzo lzop merge minus mostly13
    mostly32 mostly8 natural new new_token no not notnull null nulls of off offline
    offset oid old on only open or order outer over overlaps parallel partition
    percent permissions pivot placing preceding primary qualify range raw readratio
    recover recursive references regexp rejectlog resort respect restore returning
    right rlike rollup row rows sample select session_user set similar snapshot
    some some start sysdate system table tablesample tag tdes text255 text32k then
    to top trailing treat trigger true truncate try_cast unbounded union unique
    unknown unnest unpivot user using values variadic verbose wallet when where
    window with within without
    """.split()
)


_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z\d])([A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")


# Latin letters NFKD leaves whole, as their usual ASCII spelling (Unidecode's).
_LATIN_LETTERS: dict[str, str] = {
    "ß": "ss",
    "ẞ": "SS",
    "æ": "ae",
    "Æ": "AE",
    "œ": "oe",
    "Œ": "OE",
    "þ": "th",
    "Þ": "TH",
    "ð": "d",
    "Ð": "D",
    "ø": "o",
    "Ø": "O",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ħ": "h",
    "Ħ": "H",
    "ı": "i",
    "ŀ": "l",
    "Ŀ": "L",
    "ĸ": "k",
    "ŉ": "n",
    "ŋ": "ng",
    "Ŋ": "NG",
    "ŧ": "t",
    "Ŧ": "T",
}
# Two-letter spellings of a capital, written `Ae` before a lowercase letter (`Æble` ->
# `Aeble` -> `aeble`) so that the camelCase split does not cut them in two.
_TITLE_FORMS: dict[str, str] = {"ẞ": "Ss", "Æ": "Ae", "Œ": "Oe", "Þ": "Th"}


def latin_fold(raw: str) -> str:
    """Latin letters with diacritics, ligatures and compatibility forms (fullwidth,
    `ﬁ`) as ASCII; every other character as it is."""
    if raw.isascii():
        return raw
    chars: list[str] = []
    for at, ch in enumerate(raw):
        title = _TITLE_FORMS.get(ch)
        if title is not None and raw[at + 1 : at + 2].islower():
            chars.append(title)
        else:
            chars.append(_LATIN_LETTERS.get(ch, ch))
    decomposed = unicodedata.normalize("NFKD", "".join(chars))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _cut_with_hash(name: str, raw: str) -> str:
    """Cut to the byte limit, tagging with a hash of the raw name so cuts stay distinct."""
    tag = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:_HASH_LEN]
    keep = MAX_IDENTIFIER_BYTES - _HASH_LEN - 1
    return f"{name[:keep].rstrip('_')}_{tag}"


@lru_cache(maxsize=65536)
def snake_case(raw: str) -> str:
    """Segment's snake_case, made total: any input yields a valid lowercase identifier."""
    s = _CAMEL_1.sub(r"\1_\2", latin_fold(raw))
    s = _CAMEL_2.sub(r"\1_\2", s)
    # What is still not ASCII has no Latin form: not a portable identifier character.
    s = _NON_WORD.sub("_", s.encode("ascii", "ignore").decode("ascii")).strip("_").lower()
    if not s:
        s = "col_" + hashlib.sha1(raw.encode("utf-8")).hexdigest()[:_HASH_LEN]
    if s[0].isdigit():
        s = "_" + s
    if s in RESERVED_WORDS:
        s = "_" + s
    if len(s) > MAX_IDENTIFIER_BYTES:
        s = _cut_with_hash(s, raw)
    return s


def is_valid_identifier(name: str) -> bool:
    """What every warehouse accepts unquoted: lowercase ASCII letters, digits and `_`."""
    return (
        0 < len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES
        and re.fullmatch(r"[a-z_][a-z0-9_]*", name) is not None
        and name not in RESERVED_WORDS
    )
