"""WordNet location, the NLTK-readable copy of Debian's WordNet 3.0, and synonyms from the real database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medgr2.data import wordnet as wnmod
from medgr2.data.wordnet import (
    LEXNAMES,
    WordNetNotFoundError,
    find_wordnet_dir,
    lexnames_text,
    load_wordnet,
    prepare_nltk_wordnet,
    synonyms,
)


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per pytest session, so both test files share one in-process reader (~5 s to load)."""
    return tmp_path_factory.getbasetemp() / "medgr2-cache"


@pytest.fixture(scope="module")
def wn(tmp_path_factory: pytest.TempPathFactory):
    try:
        return load_wordnet(cache_dir=shared_cache(tmp_path_factory))
    except WordNetNotFoundError as exc:  # reported by -ra with the install instructions
        pytest.skip(str(exc))


def fake_wordnet(folder: Path, text: str = "x") -> Path:
    """A folder that looks like WordNet to the search (the two required files), not a usable database."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data.noun", "index.noun"):
        (folder / name).write_text(text)
    return folder


# --------------------------------------------------------------------------------------------- lexnames


def test_lexnames_are_the_45_wordnet_30_files() -> None:
    lines = lexnames_text().splitlines()
    assert len(lines) == 45 == len(LEXNAMES)
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[-1] == "44\tadj.ppl\t3"
    # NLTK's reader asserts "index == line number" and splits each line in three.
    assert all(int(line.split("\t")[0]) == i and len(line.split()) == 3 for i, line in enumerate(lines))


def test_lexnames_agree_with_the_database(wn) -> None:
    """Every synset's lexicographer file number names a file of its own part of speech."""
    category = {"n": 1, "v": 2, "a": 3, "s": 3, "r": 4}
    root = Path(wn.root.path)
    for suffix in ("noun", "verb", "adj", "adv"):
        with open(root / f"data.{suffix}", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                _, filenum, ss_type = line.split(" ", 3)[:3]
                assert LEXNAMES[int(filenum)][2] == category[ss_type], line[:60]
    assert wn.synset("dog.n.01").lexname() == "noun.animal"
    assert wn.synset("quickly.r.01").lexname() == "adv.all"
    assert wn.synset("enlarge.v.01").lexname() == "verb.change"


# --------------------------------------------------------------------------------------------- locating


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = fake_wordnet(tmp_path / "env")
    nltk_root = tmp_path / "nltk_data"
    fake_wordnet(nltk_root / "corpora" / "wordnet")
    system = fake_wordnet(tmp_path / "usr-share-wordnet")

    monkeypatch.setenv(wnmod.ENV_WORDNET_DIR, str(env_dir))
    assert find_wordnet_dir([nltk_root], [system]) == env_dir
    monkeypatch.delenv(wnmod.ENV_WORDNET_DIR)
    assert find_wordnet_dir([tmp_path / "nowhere", nltk_root], [system]) == nltk_root / "corpora" / "wordnet"
    assert find_wordnet_dir([tmp_path / "nowhere"], [system]) == system
    # A wrong explicit setting does not hide WordNet installed elsewhere.
    monkeypatch.setenv(wnmod.ENV_WORDNET_DIR, str(tmp_path / "missing"))
    assert find_wordnet_dir([], [system]) == system


def test_nltk_zip_and_nltk_data_root_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(wnmod.ENV_WORDNET_DIR, raising=False)
    root = tmp_path / "nltk_data"
    (root / "corpora").mkdir(parents=True)
    (root / "corpora" / "wordnet.zip").write_bytes(b"PK")
    assert find_wordnet_dir([root], []) == root / "corpora" / "wordnet.zip"
    # The env var may also name an nltk_data root.
    fake_wordnet(tmp_path / "other" / "corpora" / "wordnet")
    monkeypatch.setenv(wnmod.ENV_WORDNET_DIR, str(tmp_path / "other"))
    assert find_wordnet_dir([], []) == tmp_path / "other" / "corpora" / "wordnet"


def test_missing_wordnet_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    monkeypatch.setenv(wnmod.ENV_WORDNET_DIR, str(tmp_path / "does-not-exist"))
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setattr(wnmod, "SYSTEM_WORDNET_DIRS", ())
    for call in (find_wordnet_dir, load_wordnet):
        with pytest.raises(WordNetNotFoundError) as info:
            call()
        assert isinstance(info.value, RuntimeError)
        message = str(info.value)
        assert "apt-get install wordnet-base wordnet-sense-index" in message
        assert "nltk.download('wordnet')" in message
        assert "MEDGR2_WORDNET_DIR" in message
        assert "does-not-exist" in message  # what was searched
    with pytest.raises(WordNetNotFoundError, match="apt-get install wordnet-base"):
        load_wordnet(tmp_path)  # an explicit path without WordNet


# --------------------------------------------------------------------------------------------- the copy


def test_prepare_copies_once_and_rebuilds_when_the_source_changes(tmp_path: Path) -> None:
    source = fake_wordnet(tmp_path / "src", "v1")
    (source / "verb.exc").write_text("exc")
    out = prepare_nltk_wordnet(source, tmp_path / "cache")
    assert out == tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet"
    assert (out / "lexnames").read_text() == lexnames_text()
    assert (out / "data.noun").read_text() == "v1" and not (out / "data.noun").is_symlink()
    assert (out / "verb.exc").read_text() == "exc"
    assert all(
        not (p.stat().st_mode & 0o022) for p in out.iterdir()
    )  # NLTK refuses group/world-writable data
    stamp = (out / "lexnames").stat().st_mtime_ns

    assert prepare_nltk_wordnet(source, tmp_path / "cache") == out
    assert (out / "lexnames").stat().st_mtime_ns == stamp  # reused, not rebuilt

    (source / "data.noun").write_text("version 2")
    prepare_nltk_wordnet(source, tmp_path / "cache")
    assert (out / "data.noun").read_text() == "version 2"
    assert sorted(p.name for p in out.parent.iterdir()) == ["wordnet"]  # no temp or stale folders left


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wnmod.ENV_CACHE, str(tmp_path / "c"))
    source = fake_wordnet(tmp_path / "src")
    assert prepare_nltk_wordnet(source) == tmp_path / "c" / "nltk_data" / "corpora" / "wordnet"


def test_load_real_wordnet(wn, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert wn.get_version() == "3.0"
    assert wn.synset("dog.n.01").lemma_names()[0] == "dog"
    # Cached in-process, also when the search now finds the copy (its root was put on nltk.data.path).
    assert load_wordnet(cache_dir=shared_cache(tmp_path_factory)) is wn
    copy = Path(wn.root.path)
    if (copy / "medgr2-wordnet.json").exists():
        assert load_wordnet(copy, cache_dir=shared_cache(tmp_path_factory)) is wn
        assert (copy / "lexnames").read_text() == lexnames_text()


# --------------------------------------------------------------------------------------------- synonyms


def nltk_lemmas(wn, word: str) -> set[str]:
    """Lemma names of ``word``'s synsets straight from NLTK's reader (the reference for synonyms())."""
    return {lm.name().replace("_", " ") for s in wn.synsets(word) for lm in s.lemmas()}


def test_synonyms_come_from_wordnet(wn) -> None:
    large = synonyms("large", wn=wn)
    assert "big" in large and "large" not in large
    assert set(large) <= nltk_lemmas(wn, "large")
    assert large == synonyms("large", wn=wn)  # deterministic order
    assert len(large) == len(set(large))
    assert "magnetic resonance imaging" in synonyms("MRI", wn=wn)  # underscores become spaces
    assert "lesion" not in synonyms("lesions", wn=wn)  # its own base form is no synonym
    assert synonyms("the", wn=wn) == []
    assert synonyms("large", pos="n", wn=wn) == []  # "large" has no noun synonyms
    assert set(synonyms("large", pos="a", wn=wn)) <= set(large)


def test_max_senses_keeps_frequent_senses(wn) -> None:
    every = synonyms("ribs", wn=wn)
    frequent = synonyms("ribs", wn=wn, max_senses=2)
    assert set(frequent) <= set(every)
    assert "costa" in frequent and "ridicule" in every and "ridicule" not in frequent


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(wnmod.ENV_CACHE, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert wnmod.default_cache_dir() == Path.home() / ".cache" / "medgr2"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert wnmod.default_cache_dir() == tmp_path / "medgr2"
    monkeypatch.setenv(wnmod.ENV_CACHE, os.fspath(tmp_path / "m"))
    assert wnmod.default_cache_dir() == tmp_path / "m"
