"""Catalogue manifests: CSV/TSV, JSON lines, JSON arrays and image folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoplens.data import manifest as manifest_mod
from shoplens.data.manifest import Manifest, ManifestRow, RowError, read_manifest, slugify
from shoplens.errors import InvalidInputError, NotFoundError

HEADER = "sku,title,category,image"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def errors_by_line(m: Manifest) -> dict[int, str]:
    return {e.line: e.message for e in m.errors}


def test_csv_happy_path_with_attributes(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "shop.csv",
        "sku,title,category,image,color,size,price\n"
        "A1,Red shirt,tops,img/a1.jpg,red,M,19.99\n"
        'B2,"Blue, jeans",bottoms,https://cdn.example.com/b2.jpg,blue,,\n',
    )
    m = read_manifest(p)
    assert m.source == "csv" and m.root == tmp_path and m.errors == []
    assert m.rows == [
        ManifestRow(
            2,
            "A1",
            "Red shirt",
            "tops",
            "img/a1.jpg",
            {"color": "red", "size": "M", "price": "19.99"},
        ),
        ManifestRow(
            3, "B2", "Blue, jeans", "bottoms", "https://cdn.example.com/b2.jpg", {"color": "blue"}
        ),
    ]


def test_tsv_and_case_insensitive_header(tmp_path: Path) -> None:
    p = write(tmp_path, "shop.tsv", "SKU\tTitle\tCategory\tImage\nx\tA, b\tc\td.png\n")
    m = read_manifest(p)
    assert m.source == "tsv"
    assert [(r.sku, r.title) for r in m.rows] == [("x", "A, b")]


def test_jsonl_with_nested_attributes(tmp_path: Path) -> None:
    lines = [
        {"sku": "j1", "title": "Jacket", "category": "outer", "image": "j1.png",
         "brand": "Acme", "attributes": {"waterproof": True, "sizes": ["S", "M"], "weight": 1.5}},
        {"sku": 42, "title": "Cap", "category": "hats", "image": "cap.png", "note": None},
    ]  # fmt: skip
    p = write(tmp_path, "shop.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    m = read_manifest(p)
    assert m.source == "jsonl" and m.errors == []
    assert m.rows[0].attributes == {
        "brand": "Acme",
        "waterproof": "true",
        "sizes": '["S","M"]',
        "weight": "1.5",
    }
    assert (m.rows[1].line, m.rows[1].sku, m.rows[1].attributes) == (2, "42", {})


def test_json_array_line_numbers(tmp_path: Path) -> None:
    text = (
        "[\n"
        '  {"sku": "a", "title": "A", "category": "c", "image": "a.png"},\n'
        "  {\n"
        '    "sku": "b", "title": "", "category": "c", "image": "b.png"\n'
        "  },\n"
        "  [1, 2],\n"
        '  {"sku": "c", "title": "C", "category": "c", "image": "c.png"}\n'
        "]\n"
    )
    m = read_manifest(write(tmp_path, "shop.json", text))
    assert [(r.line, r.sku) for r in m.rows] == [(2, "a"), (7, "c")]
    errs = errors_by_line(m)
    assert set(errs) == {3, 6}
    assert "empty title" in errs[3] and "JSON object" in errs[6]
    with pytest.raises(InvalidInputError, match="line 2 column"):
        read_manifest(write(tmp_path, "bad.json", '[\n {"sku": }\n]'))
    with pytest.raises(InvalidInputError, match="jsonl"):
        read_manifest(write(tmp_path, "lines.json", '{"sku": "a"}\n{"sku": "b"}\n'))
    with pytest.raises(InvalidInputError, match="no products"):
        read_manifest(write(tmp_path, "empty.json", " [ ] "))


def test_bad_csv_rows_reported_with_record_start_lines(tmp_path: Path) -> None:
    text = (
        f"{HEADER},notes\n"  # 1
        'ok1,"A long\ndescribed\ntitle",c,a.png,x\n'  # 2-4
        "bad1,,c,b.png,x\n"  # 5: empty title
        "too,many,fields,c.png,x,y\n"  # 6
        "\n"  # 7: blank, skipped
        "bad/sku,T,c,d.png,\n"  # 8
        " pad,T,c,e.png,\n"  # 9
        f"{'s' * 129},T,c,f.png,\n"  # 10
        f"long,T,c,g.png,{'x' * 10_001}\n"  # 11
        "ctrl\x07,T,c,h.png,\n"  # 12
        "ok2,T2,c,i.png,\n"  # 13
    )
    m = read_manifest(write(tmp_path, "shop.csv", text))
    assert [(r.line, r.sku) for r in m.rows] == [(2, "ok1"), (13, "ok2")]
    assert m.rows[0].title == "A long\ndescribed\ntitle"
    errs = errors_by_line(m)
    assert sorted(errs) == [5, 6, 8, 9, 10, 11, 12]
    assert "empty title" in errs[5]
    assert "expected 5 fields, found 6" in errs[6]
    assert "'/'" in errs[8]
    assert "whitespace" in errs[9]
    assert "longer than 128" in errs[10]
    assert "longer than 10,000" in errs[11]
    assert "control characters" in errs[12]
    assert {e.line: e.sku for e in m.errors}[5] == "bad1"


def test_huge_csv_field_is_a_row_error(tmp_path: Path) -> None:
    text = f'{HEADER}\nbig,"{"y" * 300_000}",c,a.png\nok,T,c,b.png\n'
    m = read_manifest(write(tmp_path, "big.csv", text))
    assert [r.sku for r in m.rows] == ["ok"]
    assert "title is longer than 10,000" in m.errors[0].message


def test_missing_columns(tmp_path: Path) -> None:
    p = write(tmp_path, "shop.csv", "sku,name,category\n1,a,b\n")
    with pytest.raises(InvalidInputError, match=r"missing required column\(s\) title, image") as e:
        read_manifest(p)
    assert "found: sku, name, category" in e.value.message


@pytest.mark.parametrize("text", ["", "\ufeff", "\n\n", f"{HEADER}\n", f"{HEADER}\n\n,,,\n"])
def test_empty_or_header_only(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidInputError, match="has no products"):
        read_manifest(write(tmp_path, "shop.csv", text))
    with pytest.raises(InvalidInputError, match="has no products"):
        read_manifest(write(tmp_path, "shop.jsonl", ""))


def test_duplicate_skus_first_wins(tmp_path: Path) -> None:
    text = f"{HEADER}\nd,First,c,a.png\ne,Other,c,b.png\nd,Second,c,c.png\n"
    m = read_manifest(write(tmp_path, "shop.csv", text))
    assert [(r.sku, r.title) for r in m.rows] == [("d", "First"), ("e", "Other")]
    assert m.errors == [RowError(4, "d", "duplicate sku 'd' (first on line 2)")]


def test_escaping_paths_and_schemes(tmp_path: Path) -> None:
    text = (
        f"{HEADER}\n"
        "a,T,c,../outside.png\n"
        "b,T,c,/etc/passwd\n"
        f"c,T,c,{tmp_path / 'sub' / 'inside.png'}\n"
        "d,T,c,sub/../ok.png\n"
        "e,T,c,file:///etc/passwd\n"
        "f,T,c,ftp://example.com/x.png\n"
        "g,T,c,http://\n"
    )
    p = write(tmp_path, "shop.csv", text)
    m = read_manifest(p)
    assert [r.sku for r in m.rows] == ["c", "d"]
    errs = {e.sku: e.message for e in m.errors}
    assert "escapes the manifest folder" in errs["a"]
    assert "escapes the manifest folder" in errs["b"]
    assert "scheme 'file'" in errs["e"] and "scheme 'ftp'" in errs["f"]
    assert "g" in errs
    relaxed = read_manifest(p, allow_outside_root=True)
    assert [r.sku for r in relaxed.rows] == ["a", "b", "c", "d"]


def test_non_utf8_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    p.write_bytes(f"{HEADER}\nx,ok,c,a.png\ny,caf\xe9,c,b.png\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"not valid UTF-8 \(line 3, byte 6"):
        read_manifest(p)
    p16 = tmp_path / "u16.csv"
    p16.write_bytes(f"{HEADER}\nx,T,c,a.png\n".encode("utf-16"))
    with pytest.raises(InvalidInputError, match="UTF-16"):
        read_manifest(p16)
    pj = tmp_path / "bad.jsonl"
    pj.write_bytes(b'{"sku": "a"}\n{"sku": "\xff"}\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        read_manifest(pj)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\nx,T,c,a.png\n".encode())
    assert read_manifest(bom).rows[0].sku == "x"
    bomj = tmp_path / "bom.jsonl"
    bomj.write_bytes(b'\xef\xbb\xbf{"sku":"x","title":"T","category":"c","image":"a.png"}\n')
    assert read_manifest(bomj).rows[0].sku == "x"


def test_jsonl_bad_lines(tmp_path: Path) -> None:
    good = {"sku": "a", "title": "T", "category": "c", "image": "a.png"}
    text = "\n".join(
        [
            json.dumps(good),
            '{"sku": "b", "title": ',
            "[1, 2]",
            json.dumps({**good, "sku": "c", "attributes": [1]}),
            json.dumps({**good, "sku": "d", "bad$name": 1}),
            json.dumps({**good, "sku": "e", "title": {"x": 1}}),
            json.dumps({"sku": "f"}),
            json.dumps({**good, "sku": "g"}),
        ]
    )
    m = read_manifest(write(tmp_path, "shop.ndjson", text))
    assert [(r.line, r.sku) for r in m.rows] == [(1, "a"), (8, "g")]
    errs = errors_by_line(m)
    assert "invalid JSON" in errs[2]
    assert "JSON object" in errs[3]
    assert "'attributes' must be a JSON object" in errs[4]
    assert "invalid attribute name" in errs[5]
    assert "title must be text" in errs[6]
    assert "missing title" in errs[7] and "missing image" in errs[7]


def test_whole_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFoundError):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(InvalidInputError, match=r"unsupported manifest type '\.xlsx'"):
        read_manifest(write(tmp_path, "shop.xlsx", "x"))
    with pytest.raises(InvalidInputError, match=r"malformed CSV.*line 2"):
        read_manifest(write(tmp_path, "q.csv", f'{HEADER}\n"a,T,c,a.png\n'))
    with pytest.raises(InvalidInputError, match="invalid column name"):
        read_manifest(write(tmp_path, "h.csv", f"{HEADER},pri$e\na,T,c,a.png,1\n"))
    with pytest.raises(InvalidInputError, match="twice"):
        read_manifest(write(tmp_path, "d.csv", f"{HEADER},Sku\na,T,c,a.png,1\n"))
    p = write(tmp_path, "ok.csv", f"{HEADER}\na,T,c,a.png\n")
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", 10)
    with pytest.raises(InvalidInputError, match="over the limit"):
        read_manifest(p)


def test_folder_source(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for rel in [
        "Shoes/Red_Runner.jpg",
        "Shoes/red-runner.PNG",
        "Shoes/red runner.webp",
        "Shoes/notes.txt",
        "Bags/tote--bag.gif",
        "Bags/.hidden.jpg",
        "loose.bmp",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"fake")
    m = read_manifest(root)
    assert m.source == "folder" and m.root == root and m.errors == []
    got = [(r.line, r.sku, r.title, r.category, r.image) for r in m.rows]
    assert got == [
        (1, "bags-tote-bag", "tote bag", "Bags", "Bags/tote--bag.gif"),
        (2, "shoes-red-runner", "Red Runner", "Shoes", "Shoes/Red_Runner.jpg"),
        (3, "shoes-red-runner-2", "red runner", "Shoes", "Shoes/red runner.webp"),
        (4, "shoes-red-runner-3", "red runner", "Shoes", "Shoes/red-runner.PNG"),
        (5, "uncategorized-loose", "loose", "uncategorized", "loose.bmp"),
    ]
    assert read_manifest(root).rows == m.rows
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="no images"):
        read_manifest(empty)


def test_slugify() -> None:
    assert slugify("Café  Crème--Deluxe_2") == "cafe-creme-deluxe-2"
    assert slugify("***") == ""
