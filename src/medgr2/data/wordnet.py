"""Real WordNet 3.0 for the synonym grade of D_grade, found where it is installed — never downloaded.

Where WordNet is looked for (first hit wins, see :func:`find_wordnet_dir`):

1. ``$MEDGR2_WORDNET_DIR``: a folder holding the WordNet database files (``data.noun``, ``index.noun``…,
   Debian or NLTK layout), an ``nltk_data`` root with ``corpora/wordnet``, or a ``wordnet.zip``;
2. every entry of ``nltk.data.path`` that holds ``corpora/wordnet/data.noun`` or ``corpora/wordnet.zip``
   (what ``nltk.download('wordnet')`` leaves);
3. ``/usr/share/wordnet``, where Debian's ``wordnet-base`` + ``wordnet-sense-index`` put WordNet 3.0.

How it is read (:func:`load_wordnet`): NLTK's ``WordNetCorpusReader``. The Debian folder lacks the
``lexnames`` file NLTK needs, and NLTK ≥ 3.9's path sandbox (``nltk.pathsec``) refuses symlinks and hard
links that lead out of an NLTK data root, so the database files are *copied* (≈36 MB, once) into
``<cache>/nltk_data/corpora/wordnet`` next to a generated ``lexnames``; ``<cache>`` is the ``cache_dir``
argument, else ``$MEDGR2_CACHE``, else ``$XDG_CACHE_HOME/medgr2`` or ``~/.cache/medgr2``. The copy is
built in a temporary folder and renamed into place, so a concurrent or interrupted build never leaves a
half-written corpus behind, and it carries a manifest (source folder, file sizes and mtimes) so an
upgraded or different source is noticed and the copy rebuilt. The cache's ``nltk_data`` root is added to
``nltk.data.path`` because that is how NLTK's sandbox authorises a data folder.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # nltk costs ~2 s to import: only pay for it when WordNet is actually used.
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

log = logging.getLogger(__name__)

ENV_WORDNET_DIR = "MEDGR2_WORDNET_DIR"
ENV_CACHE = "MEDGR2_CACHE"
#: System folders searched last (a module attribute so tests can empty it).
SYSTEM_WORDNET_DIRS: tuple[Path, ...] = (Path("/usr/share/wordnet"),)

# The files NLTK's WordNetCorpusReader may open (its ``_FILES``). Only data.noun and index.noun are
# required to call a folder "WordNet"; the others are copied when present (index.sense comes from
# Debian's separate wordnet-sense-index package and is only read by sense-key look-ups).
WORDNET_FILES: tuple[str, ...] = (
    "cntlist.rev",
    "lexnames",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)
_REQUIRED = ("data.noun", "index.noun")
_MANIFEST = "medgr2-wordnet.json"

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)): number, name, syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb). Synsets store the number; NLTK maps it to the name.
LEXNAMES: tuple[tuple[int, str, int], ...] = (
    (0, "adj.all", 3),
    (1, "adj.pert", 3),
    (2, "adv.all", 4),
    (3, "noun.Tops", 1),
    (4, "noun.act", 1),
    (5, "noun.animal", 1),
    (6, "noun.artifact", 1),
    (7, "noun.attribute", 1),
    (8, "noun.body", 1),
    (9, "noun.cognition", 1),
    (10, "noun.communication", 1),
    (11, "noun.event", 1),
    (12, "noun.feeling", 1),
    (13, "noun.food", 1),
    (14, "noun.group", 1),
    (15, "noun.location", 1),
    (16, "noun.motive", 1),
    (17, "noun.object", 1),
    (18, "noun.person", 1),
    (19, "noun.phenomenon", 1),
    (20, "noun.plant", 1),
    (21, "noun.possession", 1),
    (22, "noun.process", 1),
    (23, "noun.quantity", 1),
    (24, "noun.relation", 1),
    (25, "noun.shape", 1),
    (26, "noun.state", 1),
    (27, "noun.substance", 1),
    (28, "noun.time", 1),
    (29, "verb.body", 2),
    (30, "verb.change", 2),
    (31, "verb.cognition", 2),
    (32, "verb.communication", 2),
    (33, "verb.competition", 2),
    (34, "verb.consumption", 2),
    (35, "verb.contact", 2),
    (36, "verb.creation", 2),
    (37, "verb.emotion", 2),
    (38, "verb.motion", 2),
    (39, "verb.perception", 2),
    (40, "verb.possession", 2),
    (41, "verb.social", 2),
    (42, "verb.stative", 2),
    (43, "verb.weather", 2),
    (44, "adj.ppl", 3),
)

INSTALL_HINT = (
    "Install WordNet 3.0 with one of:\n"
    "  * Debian/Ubuntu: apt-get install wordnet-base wordnet-sense-index   (puts it in /usr/share/wordnet)\n"
    "  * on a machine with internet: python -c \"import nltk; nltk.download('wordnet')\"   "
    "(copy the resulting nltk_data folder here if this machine is offline)\n"
    f"  * or point {ENV_WORDNET_DIR} at a folder holding data.noun, index.noun, ... (or a wordnet.zip).\n"
    "medgr2 never downloads WordNet at run time."
)


class WordNetNotFoundError(RuntimeError):
    """WordNet 3.0 is not installed anywhere medgr2 looks; the message says how to install it."""


def lexnames_text() -> str:
    """The ``lexnames`` file NLTK expects: ``"00\\tadj.all\\t3\\n" … "44\\tadj.ppl\\t3\\n"``."""
    return "".join(f"{num:02d}\t{name}\t{cat}\n" for num, name, cat in LEXNAMES)


def _is_wordnet_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED)


def _wordnet_in(path: Path) -> Path | None:
    """The WordNet location ``path`` designates (a database folder or a wordnet.zip), if any."""
    if path.is_file() and path.name == "wordnet.zip":
        return path
    if _is_wordnet_dir(path):
        return path
    for candidate in (path / "corpora" / "wordnet", path / "wordnet"):
        if _is_wordnet_dir(candidate):
            return candidate
    for candidate in (path / "corpora" / "wordnet.zip", path / "wordnet.zip"):
        if candidate.is_file():
            return candidate
    return None


def _nltk_data_paths() -> list[str]:
    import nltk

    return [str(p) for p in nltk.data.path]


def find_wordnet_dir(
    nltk_paths: Iterable[str | os.PathLike[str]] | None = None,
    system_dirs: Iterable[str | os.PathLike[str]] | None = None,
) -> Path:
    """Locate an installed WordNet 3.0: a folder with its database files, or an NLTK ``wordnet.zip``.

    Searched in order: ``$MEDGR2_WORDNET_DIR``; ``nltk_paths`` (default ``nltk.data.path``) entries that
    hold ``corpora/wordnet`` with ``data.noun`` or ``corpora/wordnet.zip``; ``system_dirs`` (default
    :data:`SYSTEM_WORDNET_DIRS`, i.e. ``/usr/share/wordnet``). Nothing is downloaded.

    :raises WordNetNotFoundError: nothing found; the message lists what was searched and how to install.
    """
    searched: list[str] = []
    env = os.environ.get(ENV_WORDNET_DIR, "").strip()
    if env:
        hit = _wordnet_in(Path(env).expanduser())
        if hit is not None:
            return hit
        # A wrong explicit setting is worth a loud note, but the other places may still hold WordNet.
        log.warning("%s=%s holds no WordNet (no data.noun/index.noun or wordnet.zip)", ENV_WORDNET_DIR, env)
        searched.append(f"${ENV_WORDNET_DIR}={env}")
    for entry in _nltk_data_paths() if nltk_paths is None else nltk_paths:
        root = Path(entry).expanduser()
        # Only the NLTK layout counts here: an nltk_data root is not a WordNet folder itself.
        if _is_wordnet_dir(root / "corpora" / "wordnet"):
            return root / "corpora" / "wordnet"
        if (root / "corpora" / "wordnet.zip").is_file():
            return root / "corpora" / "wordnet.zip"
        searched.append(f"{root}/corpora/wordnet")
    for entry in SYSTEM_WORDNET_DIRS if system_dirs is None else system_dirs:
        if _is_wordnet_dir(Path(entry)):
            return Path(entry)
        searched.append(str(entry))
    raise WordNetNotFoundError(
        "WordNet 3.0 was not found (searched: " + (", ".join(searched) or "nothing") + ").\n" + INSTALL_HINT
    )


def default_cache_dir() -> Path:
    """medgr2's cache root: ``$MEDGR2_CACHE``, else ``$XDG_CACHE_HOME/medgr2``, else ``~/.cache/medgr2``."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medgr2"


def _manifest(source: Path) -> dict[str, Any]:
    """What the copy was made from; any change (package upgrade, other source) forces a rebuild."""
    files = {}
    for name in WORDNET_FILES:
        f = source / name
        if f.is_file():
            st = f.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"source": str(source.resolve()), "files": files, "lexnames": lexnames_text()}


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def prepare_nltk_wordnet(source: Path, cache_dir: Path | None = None) -> Path:
    """Return ``<cache>/nltk_data/corpora/wordnet``: an NLTK-readable copy of the WordNet folder ``source``.

    Built once and reused while its manifest matches ``source``. The build goes to a temporary sibling
    folder that is renamed into place, so readers never see a partial corpus; if another process wins the
    race with an equally valid copy, ours is discarded. Files are made ``0644`` because NLTK refuses
    group/world-writable data (a umask of 002 would otherwise break reading).
    """
    source = Path(source)
    if not _is_wordnet_dir(source):
        raise WordNetNotFoundError(
            f"{source} is not a WordNet folder (no data.noun/index.noun).\n{INSTALL_HINT}"
        )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "nltk_data" / "corpora" / "wordnet"
    wanted = _manifest(source)
    if _read_manifest(final) == wanted:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-build-", dir=final.parent))
    stale: Path | None = None
    try:
        for name in wanted["files"]:
            shutil.copyfile(source / name, tmp / name)
            os.chmod(tmp / name, 0o644)
        if "lexnames" not in wanted["files"]:  # Debian's package lacks it; an NLTK copy has its own.
            (tmp / "lexnames").write_text(lexnames_text())
            os.chmod(tmp / "lexnames", 0o644)
        # The manifest goes last: a folder with a manifest is complete by construction.
        (tmp / _MANIFEST).write_text(json.dumps(wanted, sort_keys=True))
        os.chmod(tmp / _MANIFEST, 0o644)
        os.chmod(tmp, 0o755)
        if final.exists():
            # A stale copy: move it aside first (rename cannot replace a non-empty folder).
            stale = Path(tempfile.mkdtemp(prefix=".wordnet-stale-", dir=final.parent))
            try:
                os.rename(final, stale / "wordnet")
            except FileNotFoundError:
                pass  # another process moved it meanwhile
        try:
            os.rename(tmp, final)
        except OSError:
            # Lost a race: keep the winner when it is a good copy, else surface the error.
            if _read_manifest(final) != wanted:
                raise
        log.info("prepared NLTK WordNet copy of %s in %s", source, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _authorise(root: Path) -> None:
    """Add ``root`` to ``nltk.data.path``: NLTK ≥ 3.9 only opens files under its data roots."""
    import nltk

    text = str(root)
    if text not in nltk.data.path:
        nltk.data.path.append(text)


def _under_nltk_root(path: Path) -> bool:
    resolved = path.resolve()
    for entry in _nltk_data_paths():
        try:
            if resolved.is_relative_to(Path(entry).expanduser().resolve()):
                return True
        except (OSError, ValueError):
            continue
    return False


def _original_source(location: Path) -> Path:
    """The folder a medgr2-made copy was built from, else ``location`` itself.

    Once a copy's ``nltk_data`` root is on ``nltk.data.path``, the search finds the copy first; mapping
    it back to its source keeps one in-process reader (and one manifest check) per installed WordNet.
    """
    manifest = _read_manifest(location) if location.is_dir() else None
    if manifest and _is_wordnet_dir(Path(manifest.get("source", ""))):
        return Path(manifest["source"])
    return location


@functools.lru_cache(maxsize=4)
def _load_reader(location: str, cache_dir: str) -> WordNetCorpusReader:
    """Build the reader once per (location, cache) in this process (loading indexes takes seconds)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.data import ZipFilePathPointer

    where = Path(location)
    if where.suffix == ".zip":
        _authorise(where.parent)
        root: Any = ZipFilePathPointer(str(where), "wordnet/")
    elif (where / "lexnames").is_file() and _under_nltk_root(where):
        root = str(where)  # an nltk.download()ed corpus: readable as it is
    else:
        root = str(prepare_nltk_wordnet(where, Path(cache_dir)))
        _authorise(Path(root).parent.parent)
    with warnings.catch_warnings():
        # omw_reader=None: only English lemmas are used, so the multilingual warning is noise.
        warnings.simplefilter("ignore")
        reader = WordNetCorpusReader(root, None)
    log.info("loaded WordNet %s from %s", reader.get_version(), location)
    return reader


def load_wordnet(
    path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> WordNetCorpusReader:
    """An NLTK ``WordNetCorpusReader`` over installed WordNet 3.0 (cached in-process).

    :param path: a WordNet folder (Debian or NLTK layout), an ``nltk_data`` root or a ``wordnet.zip``;
        default :func:`find_wordnet_dir`.
    :param cache_dir: medgr2's cache root for the NLTK-readable copy; default :func:`default_cache_dir`.
    :raises WordNetNotFoundError: WordNet is not installed (the message says how to install it).
    """
    if path is None:
        location = find_wordnet_dir()
    else:
        hit = _wordnet_in(Path(path).expanduser())
        if hit is None:
            raise WordNetNotFoundError(
                f"{path} holds no WordNet (data.noun/index.noun or wordnet.zip).\n{INSTALL_HINT}"
            )
        location = hit
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _load_reader(str(_original_source(location).resolve()), str(cache.resolve()))


def _lemma_text(name: str) -> str:
    return name.replace("_", " ")


def synonyms(
    word: str,
    pos: str | None = None,
    wn: WordNetCorpusReader | None = None,
    max_senses: int | None = None,
) -> list[str]:
    """WordNet synonyms of ``word``: lemma names of its synsets, underscores turned into spaces.

    Order is WordNet's (synsets by part of speech then sense number, lemmas in synset order), with
    duplicates dropped, so the result is deterministic. The word itself is excluded case-insensitively,
    and so are its own base forms (``lesions`` -> ``lesion``): replacing a word by its lemma is not a
    synonym substitution.

    :param pos: restrict to one part of speech (``"n"``, ``"v"``, ``"a"``, ``"s"``, ``"r"``).
    :param wn: a reader from :func:`load_wordnet`; default ``load_wordnet()``.
    :param max_senses: keep only the word's ``max_senses`` most frequent senses, ranked by WordNet's
        SemCor tag counts (``cntlist.rev``; ties and untagged words keep WordNet's order). Without it every
        sense contributes, rare ones included ("ribs" -> "ridicule", "dark" -> "iniquity").
    """
    wn = wn if wn is not None else load_wordnet()
    key = word.strip()
    if not key:
        return []
    query = key.replace(" ", "_")
    forms = {key.lower(), _lemma_text(query).lower()}
    for p in (pos,) if pos else ("n", "v", "a", "r"):
        base = wn.morphy(query.lower(), p)
        if base:
            forms.add(_lemma_text(base).lower())
    synsets = list(wn.synsets(query, pos=pos))
    if max_senses is not None and max_senses > 0:
        # How often *this word* was tagged with each sense (other lemmas' counts say nothing about it).
        counts = [
            sum(lm.count() for lm in s.lemmas() if _lemma_text(lm.name()).lower() in forms) for s in synsets
        ]
        ranked = sorted(range(len(synsets)), key=lambda i: (-counts[i], i))[:max_senses]
        synsets = [synsets[i] for i in sorted(ranked)]
    out: list[str] = []
    seen: set[str] = set()
    for synset in synsets:
        for lemma in synset.lemmas():
            text = _lemma_text(lemma.name())
            if text.lower() in forms or text in seen:
                continue
            seen.add(text)
            out.append(text)
    return out


__all__ = [
    "INSTALL_HINT",
    "LEXNAMES",
    "WordNetNotFoundError",
    "default_cache_dir",
    "find_wordnet_dir",
    "lexnames_text",
    "load_wordnet",
    "prepare_nltk_wordnet",
    "synonyms",
]
