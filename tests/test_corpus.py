"""corpus.py: layouts, compression, globs, chunking at document boundaries, bad input."""
import bz2
import gzip
import json
import os
import shutil

import pytest

from conftest import shared_path
from pretrain.data import corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample", "clue_small.txt")


def read_all(paths, chunk_bytes=1 << 20, fmt="auto", fields=None):
    """[(kind, 'file:line', text or reason)] over every chunk of every file."""
    out = []
    for task in corpus.plan_chunks(corpus.expand_inputs(paths), chunk_bytes, fmt):
        for _, where, items, _ in corpus.read_task(task, fields):
            for item in items:
                if isinstance(item, corpus.Doc):
                    out.append(("doc", where(item.where), item.text))
                else:
                    out.append(("bad", where(item.where), item.reason))
    return out


def test_nlp_chinese_corpus_json_layouts(tmp_path):
    rows = [
        {"id": "1", "url": "u", "title": "标题", "text": "维基正文。"},  # wiki2019zh
        {"news_id": "n", "keywords": "k", "title": "新闻", "desc": "摘要", "source": "s",
         "time": "t", "content": "新闻正文。"},  # news2016zh
        {"qid": "q", "category": "c", "title": "问题", "desc": "", "answer": "回答。"},  # baike
        {"qid": "q", "title": "问", "desc": "描述", "topic": "t", "star": 1,
         "content": "答案。", "answer_id": "a", "answerer_tags": ""},  # webtext2019zh
    ]
    path = tmp_path / "mixed.json"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert corpus.sniff_format(str(path)) == "jsonl"
    texts = [t for kind, _, t in read_all(str(path))]
    assert texts == ["维基正文。", "新闻\n摘要\n新闻正文。", "问题\n回答。", "问\n描述\n答案。"]
    # --text_field overrides the detection; records without it are reported
    got = read_all(str(path), fields=["title"])
    assert [t for _, _, t in got] == ["标题", "新闻", "问题", "问"]
    got = read_all(str(path), fields=["desc"])
    assert got[0] == ("bad", "%s:1" % path, "no_text_field")
    assert got[2] == ("bad", "%s:3" % path, "empty_document")


def test_plain_text_lines_and_paragraphs(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("\ufeff第一篇。\n第二篇。\n\n第三篇。\n", "utf-8")
    assert corpus.sniff_format(str(lines)) == "paragraphs"
    assert [t for _, _, t in read_all(str(lines), fmt="lines")] == ["第一篇。", "第二篇。", "第三篇。"]
    paras = [t for _, _, t in read_all(str(lines))]
    assert paras == ["第一篇。\n第二篇。", "第三篇。"]
    assert corpus.sniff_format(SAMPLE) == "lines"


def test_gz_bz2_globs_and_dirs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    with open(SAMPLE, "rb") as f:
        data = b"".join(f.readlines()[:50])
    (tmp_path / "a" / "plain.txt").write_bytes(data)
    with gzip.open(tmp_path / "a" / "b" / "x.txt.gz", "wb") as f:
        f.write(data)
    with bz2.open(tmp_path / "a" / "b" / "y.txt.bz2", "wb") as f:
        f.write(data)
    files = corpus.expand_inputs(str(tmp_path / "a" / "**" / "*"))
    assert [os.path.basename(f) for f in files] == ["x.txt.gz", "y.txt.bz2", "plain.txt"]
    assert corpus.expand_inputs(str(tmp_path / "a")) == files
    docs = read_all(files)
    assert len(docs) == 150
    assert [t for _, _, t in docs[:50]] == [t for _, _, t in docs[50:100]] == \
        [t for _, _, t in docs[100:]]
    assert docs[51][1] == "%s:2" % files[1]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        corpus.expand_inputs(str(tmp_path / "nothing*.json"))


@pytest.mark.parametrize("compress", [False, True])
def test_chunks_split_at_document_boundaries(tmp_path, compress):
    """Any chunk size gives the same documents, each exactly once, with true line numbers."""
    src = shared_path("corpus", "albert_zh_news_zh_1.txt")  # blank-line separated
    path = tmp_path / ("news.txt.gz" if compress else "news.txt")
    with open(src, "rb") as f, (gzip.open(path, "wb") if compress else open(path, "wb")) as g:
        shutil.copyfileobj(f, g)
    whole = read_all(str(path), chunk_bytes=1 << 30)
    assert len(whole) == 10 and all(kind == "doc" for kind, _, _ in whole)
    for chunk_bytes in (500, 3001, 10000):
        tasks = corpus.plan_chunks([str(path)], chunk_bytes)
        assert sum(len(t) for t in tasks) > 1
        assert read_all(str(path), chunk_bytes=chunk_bytes) == whole
    # line numbers are real: the reported line starts the document
    with open(src, encoding="utf-8") as f:
        all_lines = f.read().split("\n")
    for _, where, text in whole:
        line = int(where.rsplit(":", 1)[1])
        assert all_lines[line - 1] == text.split("\n")[0]


def test_jsonl_chunks_on_real_wiki(tmp_path):
    path = shared_path("corpus", "wiki_cmrc2018_zh_hans.jsonl")
    whole = read_all(path, chunk_bytes=1 << 30)
    assert len(whole) == 1573
    assert read_all(path, chunk_bytes=200000) == whole


def test_bad_input_is_reported_with_file_and_line(tmp_path):
    # real records broken across two lines in the middle of a string
    path = shared_path("similarity", "simbert_data_sample.json")
    got = read_all(path)
    bad = [(w, r) for kind, w, r in got if kind == "bad"]
    assert len(bad) == 8 and {r for _, r in bad} == {"bad_json"}
    assert len([1 for kind, _, _ in got if kind == "doc"]) == 10
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for where, _ in bad:
        line = int(where.rsplit(":", 1)[1])
        with pytest.raises(ValueError):
            json.loads(lines[line - 1])
    # the other reasons
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n[1, 2]\n{"title": "t"}\n'
                      b'{"text": "   "}\n{"text": "fine"\n{"text": "end"}\n')
    got = read_all(str(mixed))
    assert got == [("doc", "%s:1" % mixed, "ok"), ("bad", "%s:2" % mixed, "bad_utf8"),
                   ("bad", "%s:3" % mixed, "not_an_object"),
                   ("bad", "%s:4" % mixed, "no_text_field"),
                   ("bad", "%s:5" % mixed, "empty_document"),
                   ("bad", "%s:6" % mixed, "bad_json"), ("doc", "%s:7" % mixed, "end")]
