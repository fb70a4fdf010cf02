"""The embedded default data set: a seeded synthetic MRE mix with both effects planted (no download).

Generative process of `generate(n, n_classes=C, language, seed, wli_helps_tli=s_w, tli_helps_wli=s_t)`,
all draws from one `random.Random(seed)` (nothing depends on global state, `hash()` or set order):

0. Vocabulary. There are 8 classes and 8 entity types; class i has one *characteristic type* t(i)
   (Sports->event, Music->work, Travel->location, Technology->product, Business->organization,
   Food->food, Nature->animal, Politics->person; the first C classes are used). Entity words are
   invented names (Latin letters in en, katakana in ja) in two disjoint pools:
   - pool A, 48 *type-shared* words: 8 groups of 6 words; each group names one of two types. The
     groups are the edges of a ring over the C characteristic types t(0..C-1) plus a second ring
     over the remaining 8-C types (a ring of two types is the same pair twice, a ring of one type
     is a self-loop, i.e. words of that type alone). So every characteristic-type word is shared
     with a neighbouring characteristic type: the surface word narrows the type to two, not one.
   - pool B, 16 *class-ambiguous* words (`ambiguous_words`): word j may be either of the two types
     of pair j // 2 (e.g. person/location); its class-decided type is
     f(j, c) = pair[(j + c) % 2], so words 2k and 2k+1 always get opposite types.
   Each class also has two topical *cue* nouns (`match`/`tournament` for Sports, ...).
1. Labels: `[i % C for i in range(n)]`, shuffled, so class counts differ by at most one.
2. Entities: k ~ uniform{1, 2, 3}. The first slot is an A slot, each further slot is a B slot
   with probability 1/2 (else A).
   - A slot (knob s_w = wli_helps_tli): with probability s_w the type is t(c), otherwise uniform
     over all 8 types; the word is uniform over the pool-A words that can name that type.
   - B slot (knob s_t = tli_helps_wli): the word j is uniform over pool B; with probability s_t
     its type is f(j, c), otherwise uniform over its two types.
   A slot whose word already occurs in the record is redrawn; the slots are then shuffled.
3. Text: one of 7 templates with slots for the entities (joined "A", "A and B", "A, B and C";
   ja: "A", "AとB", "A、BとC"), a time phrase (uniform) and a cue noun: with probability
   CUE_STRENGTH (0.25, fixed) a cue of the record's class, otherwise a cue of a uniformly drawn
   class. en texts have 8-16 words; ja texts are one sentence ending in "。" without spaces.
   The WLI pairs carry exact character offsets (text[start:end] == span), in text order.

What this plants (measured in tests/test_synthetic.py with count-based estimators):
- WLI helps TLI: at s_w > 0 the type multiset predicts the class (about 0.9 accuracy at s_w=0.9,
  C=4), while the words alone only narrow each A entity to two neighbouring classes (plus the
  weak cue). At s_w = 0 the A types are independent of the class, and the B types are too
  (words 2k/2k+1 swap types between classes c and c+1), so the type multiset carries no class
  information whatever s_t is.
- TLI helps WLI: at s_t > 0 the type of a B word is decided by (word, class); from the word alone
  it is a coin flip (for even C). At s_t = 0 the class says nothing about B types whatever s_w is.
- The knobs drive separate mechanisms, but dependence between a type and the class given the
  word is symmetric (I(C; type | word) is one quantity): with s_t > 0 a (B word, type) pair also
  narrows the class, and with s_w > 0 the class also sharpens the type of an A word. The clean
  null for either direction is therefore s_w = s_t = 0, where WLI and TLI are independent given
  the text.
"""

from __future__ import annotations

import random
import re

from mre.data.options import Language
from mre.data.record import Record, WLIPair
from mre.errors import ConfigError

MAX_CLASSES = 8
CUE_STRENGTH = 0.25
P_B_SLOT = 0.5
_WORDS_PER_A_GROUP = 6
_N_B_WORDS = 16

# Entity types, in a fixed order; _CHAR_TYPE[i] is the index of class i's characteristic type.
_TYPES = {
    "en": ["person", "location", "organization", "product", "event", "work", "food", "animal"],
    "ja": ["人名", "地名", "組織名", "製品名", "イベント名", "作品名", "食品名", "動物名"],
}
_CLASSES = {
    "en": ["Sports", "Music", "Travel", "Technology", "Business", "Food", "Nature", "Politics"],
    "ja": ["スポーツ", "音楽", "旅行", "テクノロジー", "ビジネス", "グルメ", "自然", "政治"],
}
_CHAR_TYPE = [4, 5, 1, 3, 2, 6, 7, 0]
# Type pairs of the pool-B words (word j uses pair j // 2).
_B_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 4), (3, 6), (5, 7)]
_CUES = {
    "en": [
        ["match", "tournament"],
        ["concert", "album"],
        ["trip", "journey"],
        ["software", "device"],
        ["market", "merger"],
        ["recipe", "dinner"],
        ["forest", "wildlife"],
        ["election", "policy"],
    ],
    "ja": [
        ["試合", "大会"],
        ["演奏会", "新曲"],
        ["旅", "観光"],
        ["新技術", "開発"],
        ["市場", "取引"],
        ["料理", "夕食"],
        ["森", "野生動物"],
        ["選挙", "政策"],
    ],
}
_WHEN = {
    "en": ["yesterday", "last week", "this morning", "again", "on Monday", "once more", "late at night"],
    "ja": ["昨日", "先週", "今朝", "月曜日", "去年", "今年", "先月"],
}
_TEMPLATES = {
    "en": [
        "People kept talking about {ents} during the {topic} {when}.",
        "The {topic} brought {ents} back into the news {when}.",
        "A short report on the {topic} mentioned {ents} {when}.",
        "{ents} appeared in a story about the {topic} {when}.",
        "Nobody expected {ents} to matter so much for the {topic} {when}.",
        "According to the local paper, {ents} shaped the {topic} {when}.",
        "Fans of the {topic} heard about {ents} {when}.",
    ],
    "ja": [
        "{when}の{topic}では{ents}が話題になった。",
        "{when}、{topic}の記事で{ents}が紹介された。",
        "{ents}は{when}の{topic}で何度も名前が挙がった。",
        "{topic}に関する{when}の報告に{ents}が登場した。",
        "{when}の{topic}に{ents}がこれほど関わるとは誰も思わなかった。",
        "地元の新聞によると、{ents}が{when}の{topic}を盛り上げた。",
        "{topic}のファンは{when}、{ents}のことを知った。",
    ],
}
_JOIN = {"en": (", ", " and "), "ja": ("、", "と")}
_SLOT = re.compile(r"\{(ents|topic|when)\}")


def _make_names(language: str, count: int) -> list[str]:
    """`count` distinct invented names, the same on every call (a fixed private seed)."""
    rng = random.Random(f"mre-synthetic-names-{language}")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        if Language(language) is Language.en:
            onset = "bdfgklmnprstvz"
            name = (
                rng.choice(onset)
                + rng.choice("aeiou")
                + rng.choice(onset)
                + rng.choice("aeiou")
                + rng.choice(["n", "r", "s", "l", ""])
            ).capitalize()
        else:
            kana = "カキクケコサシスセソタチテトナニネノハヒフホマミムメモラリルレロ"
            name = "".join(rng.choice(kana) for _ in range(3)) + rng.choice(["", "ン"])
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _check_language(language: str) -> None:
    if language not in set(Language):
        raise ConfigError(f"language must be one of {[str(x) for x in Language]}, got {language!r}")


def _check_n_classes(n_classes: int) -> None:
    if not isinstance(n_classes, int) or not 2 <= n_classes <= MAX_CLASSES:
        raise ConfigError(f"n_classes must be between 2 and {MAX_CLASSES}, got {n_classes!r}")


def class_names(language: str, n_classes: int) -> list[str]:
    """The text labels of a data set with `n_classes` classes, in class-index order."""
    _check_language(language)
    _check_n_classes(n_classes)
    return list(_CLASSES[language][:n_classes])


def entity_types(language: str) -> list[str]:
    """All 8 entity types of the language (every data set may use all of them)."""
    _check_language(language)
    return list(_TYPES[language])


def ambiguous_words(language: str) -> dict[str, tuple[str, str]]:
    """Pool-B words (whose type the class decides, knob `tli_helps_wli`) and their two types."""
    _check_language(language)
    names = _make_names(language, 8 * _WORDS_PER_A_GROUP + _N_B_WORDS)[8 * _WORDS_PER_A_GROUP :]
    types = _TYPES[language]
    return {w: (types[_B_PAIRS[j // 2][0]], types[_B_PAIRS[j // 2][1]]) for j, w in enumerate(names)}


def _a_words_by_type(names: list[str], n_classes: int) -> list[list[str]]:
    """Pool-A words that can name each type, from the two rings of type pairs (see module doc)."""
    active = [_CHAR_TYPE[i] for i in range(n_classes)]
    rest = [t for t in range(len(_CHAR_TYPE)) if t not in active]
    edges = [(ring[i], ring[(i + 1) % len(ring)]) for ring in (active, rest) for i in range(len(ring))]
    by_type: list[list[str]] = [[] for _ in _CHAR_TYPE]
    for e, (a, b) in enumerate(edges):
        for w in names[e * _WORDS_PER_A_GROUP : (e + 1) * _WORDS_PER_A_GROUP]:
            by_type[a].append(w)
            if b != a:
                by_type[b].append(w)
    return by_type


def _render(language: str, template: str, ents: list[str], topic: str, when: str):
    """Fill a template; return the text and the (start, end) offsets of each entity, in order."""
    sep, last = _JOIN[language]
    text = ""
    offsets: list[tuple[int, int]] = []
    pos = 0
    for m in _SLOT.finditer(template):
        text += template[pos : m.start()]
        pos = m.end()
        if m.group(1) == "topic":
            text += topic
        elif m.group(1) == "when":
            text += when
        else:
            for i, e in enumerate(ents):
                if i:
                    text += last if i == len(ents) - 1 else sep
                offsets.append((len(text), len(text) + len(e)))
                text += e
    text += template[pos:]
    return text, offsets


def generate(
    n: int,
    n_classes: int = 4,
    language: str = "en",
    seed: int = 42,
    wli_helps_tli: float = 0.8,
    tli_helps_wli: float = 0.8,
    id_prefix: str = "syn",
) -> list[Record]:
    """`n` synthetic MRE-mix records (see the module docstring for the exact process)."""
    _check_language(language)
    _check_n_classes(n_classes)
    for name, s in (("wli_helps_tli", wli_helps_tli), ("tli_helps_wli", tli_helps_wli)):
        if not 0.0 <= s <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {s!r}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n!r}")

    rng = random.Random(seed)
    names = _make_names(language, 8 * _WORDS_PER_A_GROUP + _N_B_WORDS)
    a_by_type = _a_words_by_type(names[: 8 * _WORDS_PER_A_GROUP], n_classes)
    b_words = names[8 * _WORDS_PER_A_GROUP :]
    types, classes = _TYPES[language], _CLASSES[language]
    width = len(str(max(n - 1, 0)))

    labels = [i % n_classes for i in range(n)]
    rng.shuffle(labels)
    records: list[Record] = []
    for i, c in enumerate(labels):
        k = rng.randint(1, 3)
        kinds = ["A"] + ["B" if rng.random() < P_B_SLOT else "A" for _ in range(k - 1)]
        slots: list[tuple[int, str]] = []
        for kind in kinds:
            while True:
                if kind == "A":
                    t = _CHAR_TYPE[c] if rng.random() < wli_helps_tli else rng.randrange(len(types))
                    w = rng.choice(a_by_type[t])
                else:
                    j = rng.randrange(len(b_words))
                    pair = _B_PAIRS[j // 2]
                    t = pair[(j + c) % 2] if rng.random() < tli_helps_wli else rng.choice(pair)
                    w = b_words[j]
                if all(w != u for _, u in slots):
                    break
            slots.append((t, w))
        rng.shuffle(slots)
        cue_class = c if rng.random() < CUE_STRENGTH else rng.randrange(n_classes)
        topic = rng.choice(_CUES[language][cue_class])
        when = rng.choice(_WHEN[language])
        template = rng.choice(_TEMPLATES[language])
        text, offsets = _render(language, template, [w for _, w in slots], topic, when)
        wli = tuple(WLIPair(types[t], w, s, e) for (t, w), (s, e) in zip(slots, offsets, strict=True))
        records.append(Record(f"{id_prefix}-{i:0{width}d}", text, classes[c], wli))
    return records
