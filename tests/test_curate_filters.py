"""Each quality rule fires on a document made to break it, and a real, clean document passes them all."""

from __future__ import annotations

import gzip
import json

import pytest

from lmstack.data.curate.blocklists import IdBlocklist, UrlBlocklist
from lmstack.data.curate.filters import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, LanguageID
from lmstack.data.curate.pii import PiiMasker
from lmstack.data.curate.readers import Document

from .helpers import SHARED_DATA


def brown(i: int = 0) -> str:
    with gzip.open(SHARED_DATA / "prose" / "brown.jsonl.gz", "rt") as f:
        for k, line in enumerate(f):
            if k == i:
                return json.loads(line)["text"]


BASE = brown(0)
PARAS = [p for p in BASE.split("\n\n") if p.strip()]
SENTENCE = "The committee said that the report would be ready with the results of the vote."


def doc(text: str, **meta) -> Document:
    return Document("d", text, "test", dict(meta))


def test_a_clean_real_document_passes_every_filter():
    for f in (GopherQuality(), GopherRepetition(), FineWebQuality(), LanguageID()):
        assert f(doc(BASE)) is None, f.name
    d = doc(BASE)
    assert C4Quality()(d) is None and len(d.text) > 0.5 * len(BASE)


@pytest.mark.parametrize(
    "text,rule",
    [
        ("The cat sat with the dog and that was the end of it.", "short_doc"),
        (BASE + (" and the" * 100_000), "long_doc"),
        (" ".join(["to be of it is as an or by on at"] * 20), "short_words"),
        (
            " ".join(["the extraordinarily incomprehensible characterisations with telecommunications"] * 12),
            "long_words",
        ),
        (BASE + " #" * 400, "hash_ratio"),
        (BASE + " ..." * 400, "ellipsis_ratio"),
        ("\n".join(["• " + SENTENCE] * 19 + [SENTENCE]), "bullet_lines"),
        ("\n".join([SENTENCE] * 6 + [SENTENCE[:-1] + "..."] * 4), "ellipsis_lines"),
        (BASE + " 1234 5678 90" * 600, "non_alpha_words"),
        (" ".join(["Cats chase mice while dogs bark loudly at night in gardens"] * 10), "stop_words"),
    ],
)
def test_gopher_quality_rules(text, rule):
    assert GopherQuality()(doc(text)) == rule


LINES = [p.replace("\n", " ") for p in PARAS]


def every_fourth_word(insert: str) -> str:
    words = BASE.split()
    return " ".join(w + (" " + insert if i % 4 == 3 else "") for i, w in enumerate(words))


@pytest.mark.parametrize(
    "text,rule,kw",
    [
        ("\n\n".join(PARAS[:6] * 3), "dup_para_frac", {}),
        ("\n\n".join([PARAS[0] * 12] + PARAS[1:10] + [PARAS[0] * 12]), "dup_para_char_frac", {}),
        ("\n".join(LINES[:6] * 3), "dup_line_frac", {}),
        (
            "\n".join([LINES[0] * 12] + LINES[1:10] + [LINES[0] * 12]),
            "dup_line_char_frac",
            {"dup_para_char_frac": None},
        ),
        (every_fourth_word("big deal"), "top_2_gram", {}),
        (every_fourth_word("xx yy zz"), "top_3_gram", {"top_n_grams": ((3, 0.18),)}),
        (every_fourth_word("aa bb cc dd"), "top_4_gram", {"top_n_grams": ((4, 0.16),)}),
    ],
)
def test_gopher_repetition_line_paragraph_and_top_ngram_rules(text, rule, kw):
    assert GopherRepetition(**kw)(doc(text)) == rule


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10])
def test_gopher_repetition_duplicated_ngram_rules(n):
    words = LINES[0].split()
    text = " ".join(words[:n] * 3 + LINES[1].split())  # one n-gram, repeated
    frac = dict(GopherRepetition().dup_n_grams)[n]
    f = GopherRepetition(top_n_grams=(), dup_n_grams=((n, frac),), dup_line_char_frac=None, dup_para_char_frac=None)
    expected = f"dup_{n}_gram" if (2 * len(" ".join(words[:n]))) / len(text) > frac else None
    assert expected == f"dup_{n}_gram"
    assert f(doc(text)) == expected
    assert f(doc(" ".join(LINES[0].split() + LINES[1].split()))) is None


def test_c4_rules():
    sentences = "\n".join([SENTENCE] * 6)
    assert C4Quality()(doc(sentences + "\nLorem ipsum dolor sit amet, consectetur.")) == "lorem_ipsum"
    assert C4Quality()(doc(sentences + "\nThe function body is { return x; } here.")) == "curly_bracket"
    assert C4Quality()(doc("\n".join([SENTENCE] * 4))) == "too_few_sentences"
    d = doc(
        sentences + "\nPlease enable JavaScript to view this site.\nRead our privacy policy before you go."
        "\nno terminal punctuation here\nToo short.\nCitation here [12] is dropped."
    )
    assert C4Quality()(d) is None
    assert d.text.splitlines() == [SENTENCE] * 6 + ["Citation here  is dropped."]


@pytest.mark.parametrize(
    "text,rule",
    [
        ("\n".join([SENTENCE[:-1]] * 9 + [SENTENCE]), "line_punct_ratio"),
        ("\n".join(["Short one.", "Another short.", "Yes indeed.", SENTENCE]), "short_line_ratio"),
        ("\n".join(LINES[:8] + [LINES[0]]), "char_dup_ratio"),
        ("\n".join(f"Item{i}." for i in range(40)) + "\n" + SENTENCE * 2, "list_ratio"),
    ],
)
def test_fineweb_rules(text, rule):
    kw = {"short_line_thr": 1.1} if rule == "list_ratio" else {}
    assert FineWebQuality(**kw)(doc(text)) == rule


def test_language_id_keeps_english_and_records_the_language():
    f = LanguageID()
    en = doc(BASE)
    assert f(en) is None and en.metadata["language"] == "en" and en.metadata["language_score"] > 0.9
    fr = doc("Le comité a déclaré que le rapport serait prêt avec les résultats du vote de la semaine prochaine.")
    assert f(fr) == "not_en" and fr.metadata["language"] == "fr"


def test_blocklists(tmp_path):
    domains = tmp_path / "domains.txt"
    domains.write_text("# opt-outs\nexample.com\nhttps://news.site.org/private/page\n")
    f = UrlBlocklist([str(domains)])
    assert f(doc("x", url="https://www.example.com/a")) == "domain"
    assert f(doc("x", url="https://blog.example.com/a")) == "domain"
    assert f(doc("x", url="https://news.site.org/private/page")) == "url"
    assert f(doc("x", url="https://news.site.org/public")) is None
    assert f(doc("x", url="https://notexample.com/")) is None
    ids = tmp_path / "spikes.jsonl"
    ids.write_text(json.dumps({"id": "d", "loss": 9.1}) + "\n")
    assert IdBlocklist([str(ids)])(doc("x")) == "listed"
    assert IdBlocklist([str(ids)])(Document("other", "x", "s")) is None


def test_pii_masking():
    m = PiiMasker()
    d = doc("Write to jane.doe+news@mail.example.co.uk or call (555) 123-4567 / 555.987.6543; server 192.168.0.12.")
    assert m(d) is None
    assert d.text == (
        "Write to |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER||| / |||PHONE_NUMBER|||; server |||IP_ADDRESS|||."
    )
    assert m.counts == {"email": 1, "phone": 2, "ip": 1}
    keep = doc("In 1961 the vote was 123 to 45 and version 3.1.4 shipped.")
    m(keep)
    assert keep.text == "In 1961 the vote was 123 to 45 and version 3.1.4 shipped."
